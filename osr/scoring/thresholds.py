"""Threshold rules and calibration: detectors fitted on the known training split, then one
threshold per detector fitted on the validation split.

Threshold rules are plain objects: ``fit(scores) -> threshold`` for one detector alone, and
``fit_union_record(scores by name)`` for the voting detectors together (the per-detector fits
for mean + k * std and quantiles; one calibration of the union for the conformal rule,
``osr.scoring.conformal``). ``calibrate`` is what the ``ThresholdCalibration`` callback
(``osr.callbacks``) runs after fit.
"""

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from osr.data.datamodules import ImageDataModule
from osr.modules.open_set import OpenSetModule
from osr.scoring.outputs import collect_scores, fit_detectors
from osr.utils.errors import OSRError

log = logging.getLogger(__name__)


def decision_values(scores: Tensor) -> Tensor:
    """The scores as ``OpenSetModule.decide`` compares them with the thresholds: float32.
    Every rule fits on these, so that the images a fit counts as kept are kept when decided
    (a float64 score can lie between two float32 values, on the wrong side of a float32
    threshold)."""
    return scores.float()


class ThresholdRule(Protocol):
    name: str

    def fit(self, scores: Tensor) -> float: ...

    def fit_union_record(
        self, scores: Mapping[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Any]]: ...


class PerScoreRule:
    """A rule whose voting detectors are each fitted alone: the union of their votes rejects
    more known images than any one of them, by an amount the rule does not control."""

    def fit(self, scores: Tensor) -> float:
        raise NotImplementedError

    def fit_union_record(
        self, scores: Mapping[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Any]]:
        return {name: self.fit(values) for name, values in scores.items()}, {}


@dataclass
class MeanStd(PerScoreRule):
    """mean + k * std of the known images' scores (population std, numpy's default)."""

    k: float = 3.0
    name: str = "mean_std"

    def fit(self, scores: Tensor) -> float:
        s = decision_values(scores).double()
        return (s.mean() + self.k * s.std(correction=0)).item()


@dataclass
class Quantile(PerScoreRule):
    """The q-quantile of the known images' scores: a fraction q of them is kept as known."""

    q: float = 0.95
    name: str = "quantile"

    def __post_init__(self) -> None:
        if not 0.0 < self.q <= 1.0:
            raise OSRError(f"calibration.q={self.q} must lie in (0, 1], e.g. calibration.q=0.95")

    def fit(self, scores: Tensor) -> float:
        return torch.quantile(decision_values(scores).double(), self.q).item()


def fit_thresholds(
    scores: dict[str, Tensor], rule: ThresholdRule, split: str = "calibration"
) -> dict[str, dict[str, float]]:
    """One threshold per score, with the statistics it was fitted on. A NaN score is an error
    naming the detector and ``split``: no rule can place a threshold among NaNs."""
    for name, values in scores.items():
        nan = torch.isnan(values)
        if nan.any():
            raise OSRError(
                f"detector {name} gave NaN on {int(nan.sum())} of {values.numel()} images of "
                f"the {split} split (first at index {int(nan.nonzero()[0])}), so no threshold "
                "can be fitted: check the checkpoint's weights and that detector's fitted "
                "state, or leave it out of `detectors`."
            )
    return {
        name: {
            "threshold": rule.fit(values),
            "mean": values.double().mean().item(),
            "std": values.double().std(correction=0).item(),
            "count": int(values.numel()),
        }
        for name, values in scores.items()
    }


def cross_fitted_decisions(
    module: OpenSetModule, rule: ThresholdRule, logits: Tensor, scores: dict[str, Tensor]
) -> Tensor:
    """The decision on every validation image, made with thresholds fitted on the other half
    of the split (first half / second half, in dataset order), so that no image is judged by a
    threshold fitted on itself."""
    n = len(logits)
    if n < 2:
        raise OSRError(
            f"the validation split holds {n} image(s); cross-fitted validation figures need "
            "at least 2. Set data.val_size=2 or more."
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
    of the validation split, which the operating curve reads again (no second pass)."""

    record: dict[str, Any]
    validation_scores: dict[str, Tensor]


def calibrate(
    module: OpenSetModule, datamodule: ImageDataModule, rule: ThresholdRule
) -> Calibration:
    """Fit thresholds on the validation split and store them in ``module``.

    Also reports how the calibrated model does on known images it was not calibrated on: the
    share rejected as UNKNOWN and the (K+1)-way accuracy (a rejection counts as an error), each
    validation image judged with thresholds cross-fitted on the other half of the split. These
    need no OOD data, so a hyperparameter search may select on them without a threshold that
    only fits its own data looking good.
    """
    newly_fitted = fit_detectors(module, datamodule)
    scores, logits, labels = collect_scores(module, datamodule, datamodule.val_dataloader())
    fitted = fit_thresholds(scores, rule, f"{datamodule.name} val")
    union, union_record = rule.fit_union_record(
        {name: scores[name] for name in module.hparams.voting_scores}
    )
    for name, threshold in union.items():
        if threshold != fitted[name]["threshold"]:
            fitted[name]["threshold_alone"] = fitted[name]["threshold"]
            fitted[name]["threshold"] = threshold
    module.set_thresholds({name: f["threshold"] for name, f in fitted.items()})
    decisions = cross_fitted_decisions(module, rule, logits, scores)
    record: dict[str, Any] = {"union_of_votes": union_record} if union_record else {}
    record |= {
        "rule": asdict(rule),
        **record,
        "detectors_fitted": {"split": f"{datamodule.name} train", "names": newly_fitted},
        "voting_scores": list(module.hparams.voting_scores),
        "split": f"{datamodule.name} val",
        "scores": fitted,
        # each half of the split judged with thresholds fitted on the other half
        "validation": {
            "known_rejection_rate": (decisions == module.unknown_label).float().mean().item(),
            "open_set_accuracy": (decisions == labels).float().mean().item(),
        },
    }
    return Calibration(record, {name: values.cpu() for name, values in scores.items()})
