"""Open-set metrics: closed-set and (K+1)-way accuracy at the calibrated thresholds, and
threshold-free separation of known and OOD images per score, from the scores' exact ranks
(their magnitude never matters: 1e17 and inf rank as any other largest score)."""

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from osr.utils.errors import OSRError

TPR_LEVEL = 0.95


@dataclass
class SetOutputs:
    """What a model said about every image of one evaluation set (on the CPU)."""

    scores: dict[str, Tensor]
    logits: Tensor
    labels: Tensor
    predictions: Tensor


def check_no_nan(scores: Tensor, detector: str, set_name: str) -> None:
    """Raise when a score is NaN: it has no rank, so no figure of the detector would mean
    anything."""
    nan = scores.isnan()
    if nan.any():
        raise OSRError(
            f"detector {detector!r} gave NaN for {int(nan.sum())} of the {len(scores)} images "
            f"of {set_name!r} (the first at index {int(nan.nonzero()[0])}): a NaN score has no "
            "rank, so its separation figures would mean nothing. Fix the detector (a 0/0 or "
            "inf - inf in it) or leave it out of detectors."
        )


def _counts_per_value(
    known: Tensor, ood: Tensor, known_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """For each distinct score of either set, in increasing order, how many known images (or
    the sum of ``known_weights`` over them) and how many OOD images have it: all that a figure
    made of ranks reads of the scores. Tied images share one value, as sklearn's curves
    treat ties."""
    scores = torch.cat([known, ood])
    if scores.isnan().any():
        raise OSRError(
            "a NaN score has no rank: separation figures and OSCR need scores without NaN "
            "(open_set_metrics names the detector and set that gave one)"
        )
    _, value = torch.unique(scores, return_inverse=True)
    size = int(value.max()) + 1
    weights = None if known_weights is None else known_weights.double()
    k = torch.bincount(value[: len(known)], weights=weights, minlength=size).double()
    o = torch.bincount(value[len(known) :], minlength=size).double()
    return k, o


def _ordered_pairs(lower: Tensor, higher: Tensor) -> Tensor:
    """How many pairs (a, b) of an image a counted in ``lower`` and an image b counted in
    ``higher`` (counts per value, in increasing order) have a below b, a tie counting one
    half."""
    return (higher * (lower.cumsum(0) - lower / 2)).sum()


def _average_precision(positive: Tensor, negative: Tensor) -> Tensor:
    """sklearn's average precision from counts per value, the most positive value first:
    the precision at each value's threshold, weighted by the recall it adds."""
    tp, fp = positive.cumsum(0), negative.cumsum(0)
    return (positive * tp / (tp + fp)).sum() / positive.sum()


def separation(known: Tensor, ood: Tensor) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR at 95% TPR of a score (higher = more unknown), NaN
    when a set is empty; a NaN score raises.

    AUROC and AUPR-Out treat OOD as positive; AUPR-In treats known as positive (scored by
    the negated score). FPR95 is the fraction of OOD images accepted as known at the
    threshold that accepts 95% of known images (accepted: score at most the threshold).
    """
    if not len(known) or not len(ood):
        return dict.fromkeys(("auroc", "aupr_in", "aupr_out", "fpr95"), float("nan"))
    k, o = _counts_per_value(known, ood)
    tpr = k.cumsum(0) / len(known)  # accepted as known at each value
    at_level = torch.searchsorted(tpr, torch.tensor(TPR_LEVEL, dtype=tpr.dtype))
    return {
        "auroc": (_ordered_pairs(k, o) / (len(known) * len(ood))).item(),
        "aupr_in": _average_precision(k, o).item(),
        "aupr_out": _average_precision(o.flip(0), k.flip(0)).item(),
        "fpr95": (o.cumsum(0)[at_level] / len(ood)).item(),
    }


def oscr(known: Tensor, correct: Tensor, ood: Tensor) -> float:
    """Open-set classification rate (Dhamija et al., 2018): the area under CCR(t) against
    FPR(t) over every threshold t, an image being accepted as known when its score is at most
    t. CCR(t) is the fraction of known images accepted and correctly classified
    (``correct``), FPR(t) the fraction of OOD images accepted. NaN when a set is empty; a NaN
    score raises.

    Images with equal scores are accepted together, so across a tie between a correct known
    image and an OOD image the curve moves diagonally (the trapezoid rule): each such pair
    counts one half, as in AUROC. Hence OSCR = accuracy x AUROC(correct known vs OOD), the
    area computed as that count of pairs.
    """
    if not len(known) or not len(ood):
        return float("nan")
    k, o = _counts_per_value(known, ood, known_weights=correct)
    return (_ordered_pairs(k, o) / (len(known) * len(ood))).item()


def open_set_metrics(
    outputs: dict[str, SetOutputs], known_set: str, num_classes: int, thresholds: dict[str, float]
) -> dict[str, object]:
    """The ``metrics.json`` contract (see README): flat keys; fractions in [0, 1] except the
    thresholds (in each score's units), the image counts and the confusion matrix."""
    for name, out in outputs.items():
        for score, values in out.scores.items():
            check_no_nan(values, score, name)
    unknown = num_classes
    known = outputs[known_set]
    ood_sets = {name: out for name, out in outputs.items() if name != known_set}
    labels = torch.cat([o.labels for o in outputs.values()])
    predictions = torch.cat([o.predictions for o in outputs.values()])
    k1 = num_classes + 1
    metrics: dict[str, object] = {
        "closed_set.accuracy": multiclass_accuracy(
            known.logits.argmax(1), known.labels, num_classes, average="micro"
        ).item(),
        "open_set.accuracy": multiclass_accuracy(predictions, labels, k1, average="micro").item(),
        "open_set.binary_accuracy": ((predictions == unknown) == (labels == unknown))
        .float()
        .mean()
        .item(),
        "open_set.macro_f1": multiclass_f1_score(predictions, labels, k1, average="macro").item(),
        "known_rejection_rate": (known.predictions == unknown).float().mean().item(),
        "open_set.confusion_matrix": multiclass_confusion_matrix(predictions, labels, k1).tolist(),
    }
    metrics.update({f"thresholds.{name}": value for name, value in thresholds.items()})
    correct = known.logits.argmax(1) == known.labels
    for name, out in ood_sets.items():
        metrics[f"ood.{name}.rejection_rate"] = (out.predictions == unknown).float().mean().item()
        metrics[f"ood.{name}.count"] = len(out.labels)
        for score, values in out.scores.items():
            figures = separation(known.scores[score], values)
            figures["oscr"] = oscr(known.scores[score], correct, values)
            for key, value in figures.items():
                metrics[f"ood.{name}.scores.{score}.{key}"] = value
    metrics[f"{known_set}.count"] = len(known.labels)
    return metrics
