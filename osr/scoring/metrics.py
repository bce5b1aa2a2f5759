"""Open-set metrics: closed-set and (K+1)-way accuracy at the calibrated thresholds, and
threshold-free separation of known and OOD images per score (torchmetrics underneath)."""

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

TPR_LEVEL = 0.95


@dataclass
class SetOutputs:
    """What a model said about every image of one evaluation set (on the CPU)."""

    scores: dict[str, Tensor]
    logits: Tensor
    labels: Tensor
    predictions: Tensor


def separation(known: Tensor, ood: Tensor) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR at 95% TPR of a score (higher = more unknown).

    AUROC and AUPR-Out treat OOD as positive; AUPR-In treats known as positive (scored by
    the negated score). FPR95 is the fraction of OOD images accepted as known at the
    threshold that accepts 95% of known images.
    """
    scores = torch.cat([known, ood]).double()
    # torchmetrics reads values outside [0, 1] as logits and squashes them with a sigmoid,
    # which ties large scores; an increasing affine map into [0, 1] keeps their order.
    lo, hi = scores.min(), scores.max()
    scores = (scores - lo) / (hi - lo) if hi > lo else torch.zeros_like(scores)
    is_ood = torch.cat([torch.zeros_like(known), torch.ones_like(ood)]).long()
    fpr, tpr, _ = binary_roc(-scores, 1 - is_ood)  # known positive: accepted = known
    return {
        "auroc": binary_auroc(scores, is_ood).item(),
        "aupr_in": binary_average_precision(-scores, 1 - is_ood).item(),
        "aupr_out": binary_average_precision(scores, is_ood).item(),
        "fpr95": fpr[tpr >= TPR_LEVEL].min().item(),
    }


def oscr(known: Tensor, correct: Tensor, ood: Tensor) -> float:
    """Open-set classification rate (Dhamija et al., 2018): the area under CCR(t) against
    FPR(t) over every threshold t, an image being accepted as known when its score is at most
    t. CCR(t) is the fraction of known images accepted and correctly classified
    (``correct``), FPR(t) the fraction of OOD images accepted.

    Images with equal scores are accepted together, so across a tie between a correct known
    image and an OOD image the curve moves diagonally (the trapezoid rule): each such pair
    counts one half, as in AUROC. Hence OSCR = accuracy x AUROC(correct known vs OOD).
    """
    if not len(known) or not len(ood):
        return float("nan")
    known, ood = known.double(), ood.double()
    thresholds = torch.cat([known, ood]).unique()  # sorted
    accepted_correct = torch.searchsorted(known[correct].sort().values, thresholds, right=True)
    accepted_ood = torch.searchsorted(ood.sort().values, thresholds, right=True)
    zero = torch.zeros(1, dtype=torch.float64)
    ccr = torch.cat([zero, accepted_correct.double() / len(known)])
    fpr = torch.cat([zero, accepted_ood.double() / len(ood)])
    return torch.trapezoid(ccr, fpr).item()


def open_set_metrics(
    outputs: dict[str, SetOutputs], known_set: str, num_classes: int, thresholds: dict[str, float]
) -> dict[str, object]:
    """The ``metrics.json`` contract (see README): flat keys; fractions in [0, 1] except the
    thresholds (in each score's units), the image counts and the confusion matrix."""
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
