"""Threshold rules: plain objects with ``fit(scores) -> threshold`` for one detector alone,
and ``fit_union_record(scores by name)`` for the voting detectors together (the per-detector
fits for mean + k * std and quantiles; one calibration of the union for the conformal rule,
``osr.scoring.conformal``). ``osr.scoring.calibration`` applies them to a model."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

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
