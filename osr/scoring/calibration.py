"""Calibration of a model: detectors fitted on the known training split, then one threshold per
detector fitted on the calibration split, and the conformal p-values' reference. ``calibrate``
is what the ``ThresholdCalibration`` callback (``osr.callbacks``) runs after fit."""

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from osr.data.datamodules import ImageDataModule
from osr.modules.open_set import OpenSetModule
from osr.scoring.conformal import Conformal, conformal_rank
from osr.scoring.outputs import collect_scores, fit_detectors
from osr.scoring.thresholds import ThresholdRule, fit_thresholds
from osr.utils.errors import OSRError


def calibration_images_needed(
    rule: ThresholdRule, images: int, voting: int, cross_fitted: bool = False
) -> int | None:
    """None when ``images`` calibration images are enough for ``rule`` (its thresholds are fitted
    on all of them and, with ``cross_fitted`` validation figures, on each half), else the
    fewest that are: only the conformal rule needs a minimum."""

    def enough(n: int) -> bool:
        for size in (n, n // 2) if cross_fitted else (n,):
            part = size if voting == 1 else size - round(rule.rank_fraction * size)
            if part < 1:
                return False
            try:
                conformal_rank(part, rule.alpha, rule.delta)
            except OSRError:
                return False
        return True

    if not isinstance(rule, Conformal) or enough(images):
        return None
    lo, hi = images + 1, max(2 * images, 4)
    while not enough(hi):
        lo, hi = hi + 1, 2 * hi
    while lo < hi:  # enough() is monotone in n: bisect for the fewest
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


def check_calibration_size(
    rule: ThresholdRule,
    images: int,
    voting: int,
    key: str,
    note: str = "",
    cross_fitted: bool = False,
) -> None:
    """Refuse a calibration split too small for the rule before anything is trained
    (``note``: what else the fix must change)."""
    needed = calibration_images_needed(rule, images, voting, cross_fitted)
    if needed is not None:
        delta = f" and calibration.delta={rule.delta}" if rule.delta is not None else ""
        halves = " (the thresholds are also cross-fitted on each half of them)"
        raise OSRError(
            f"{key}={images}: calibration.alpha={rule.alpha}{delta} with {voting} voting "
            f"detector(s) needs at least {needed} calibration images"
            + (halves if cross_fitted else "")
            + f". Set {key}={needed} or more{note}, or raise calibration.alpha"
            + (" or calibration.delta." if delta else ".")
        )


def cross_fitted_decisions(
    module: OpenSetModule, rule: ThresholdRule, logits: Tensor, scores: dict[str, Tensor]
) -> Tensor:
    """The decision on every validation image, made with thresholds fitted on the other half
    of the split (first half / second half, in dataset order), so that no image is judged by a
    threshold fitted on itself."""
    n = len(logits)
    if n < 2:
        raise OSRError(
            f"the calibration split holds {n} image(s); cross-fitted validation figures need "
            "at least 2. Set data.calibration_size=2 or more."
        )
    halves = (slice(0, n // 2), slice(n // 2, n))
    decisions = torch.empty(n, dtype=torch.long, device=logits.device)
    for fit_on, judged in (halves, halves[::-1]):
        voting = {name: scores[name][fit_on] for name in module.hparams.voting_scores}
        thresholds, _ = rule.fit_union_record(voting)
        part = {name: values[judged] for name, values in scores.items()}
        decisions[judged] = module.decide(logits[judged], part, thresholds)
    return decisions


@dataclass
class Calibration:
    """What ``calibrate`` found: the ``thresholds.json`` record, and every detector's scores
    of the calibration split, which the operating curve reads again (no second pass)."""

    record: dict[str, Any]
    validation_scores: dict[str, Tensor]


def calibration_split_record(datamodule: ImageDataModule, count: int) -> dict[str, Any]:
    """What thresholds.json says of the images the thresholds were fitted on."""
    if datamodule.calibration_count:
        used = (
            "held out from training and used for nothing else: not trained on, not used to "
            "select the checkpoint, to stop early or to drive a schedule (those use the "
            f"{datamodule.name} val split)"
        )
    else:
        used = (
            "the validation split, which also selected the checkpoint (data.calibration_size=0): "
            "the guarantee's exchangeability is not met exactly"
        )
    return {"split": datamodule.calibration_split, "count": count, "images": used}


def calibrate(
    module: OpenSetModule, datamodule: ImageDataModule, rule: ThresholdRule
) -> Calibration:
    """Fit thresholds on the calibration split (``ImageDataModule.calibration_dataloader``) and
    store them in ``module``.

    Also reports how the calibrated model does on known images it was not calibrated on: the
    share rejected as UNKNOWN and the (K+1)-way accuracy (a rejection counts as an error) of
    the validation split, judged with these thresholds (without a calibration split of its
    own, each half of the validation split judged with thresholds fitted on the other half).
    These need no OOD data, so a hyperparameter search may select on them without a threshold
    that only fits its own data looking good, and without touching the calibration images.
    """
    newly_fitted = fit_detectors(module, datamodule)
    loader = datamodule.calibration_dataloader()
    scores, logits, labels = collect_scores(module, datamodule, loader)
    split = datamodule.calibration_split
    fitted = fit_thresholds(scores, rule, split)
    union, union_record = rule.fit_union_record(
        {name: scores[name] for name in module.hparams.voting_scores}
    )
    for name, threshold in union.items():
        if threshold != fitted[name]["threshold"]:
            fitted[name]["threshold_alone"] = fitted[name]["threshold"]
            fitted[name]["threshold"] = threshold
    module.set_thresholds({name: f["threshold"] for name, f in fitted.items()})
    # p-values against the conformal rule's parts (a rule of its own: the default one's)
    reference_rule = rule if isinstance(rule, Conformal) else Conformal()
    module.conformal_reference = reference_rule.reference(
        {name: scores[name] for name in module.hparams.voting_scores}
    )
    if datamodule.calibration_count:
        judged = collect_scores(module, datamodule, datamodule.val_dataloader())
        decisions, judged_labels = module.decide(judged[1], judged[0]), judged[2]
        how = f"the {datamodule.name} val split, judged with these thresholds"
    else:
        decisions, judged_labels = cross_fitted_decisions(module, rule, logits, scores), labels
        how = "each half of the split judged with thresholds fitted on the other half"
    if "guarantee" in union_record and not datamodule.calibration_count:
        union_record["guarantee"] += (
            "; not met exactly here: the calibration images also selected the checkpoint "
            "(data.calibration_size=0)"
        )
    record: dict[str, Any] = {"union_of_votes": union_record} if union_record else {}
    record |= {
        "rule": asdict(rule),
        **record,
        "detectors_fitted": {"split": f"{datamodule.name} train", "names": newly_fitted},
        "voting_scores": list(module.hparams.voting_scores),
        "split": split,
        "calibration": calibration_split_record(datamodule, len(labels)),
        "scores": fitted,
        # figures only: every one is logged as calib/val_<name>
        "validation_images": how,
        "validation": {
            "known_rejection_rate": (decisions == module.unknown_label).float().mean().item(),
            "open_set_accuracy": (decisions == judged_labels).float().mean().item(),
        },
    }
    return Calibration(record, {name: values.cpu() for name, values in scores.items()})
