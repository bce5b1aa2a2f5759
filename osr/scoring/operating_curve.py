"""The operating curve: the known images kept and the unknowns caught by the conformal union
rule at each known-rejection budget alpha, from one set of scores (no retraining)."""

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from osr.scoring.conformal import Conformal
from osr.scoring.thresholds import decision_values
from osr.utils.errors import OSRError

# the known-rejection budgets of the operating curve: 0.1% to 10%
CURVE_ALPHAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def curve_rule(calibration: Mapping[str, Any] | None) -> Conformal:
    """The conformal rule of a run's calibration config, or the default one for runs
    calibrated by another rule (their operating curve is what the conformal rule would give
    them). Reads the config rather than instantiating it: a checkpoint's may name a rule
    that has since moved."""
    params = dict(calibration or {})
    if params.pop("_target_", None) != f"{Conformal.__module__}.{Conformal.__name__}":
        return Conformal()
    return Conformal(**params)


def operating_curve(
    rule: Conformal,
    validation: Mapping[str, Tensor],
    sets: Mapping[str, Mapping[str, Tensor]],
    alphas: tuple[float, ...] = CURVE_ALPHAS,
) -> dict[str, Any]:
    """The share of each set's images rejected by the voting detectors' union (``validation``:
    their validation scores) when calibrated by ``rule`` at each alpha: the known test split's
    share is the known rejection, the OOD sets' the unknowns caught. No retraining, no new
    scores; an alpha the calibration split is too small for is left out."""
    rows = []
    for alpha in alphas:
        try:
            thresholds, _ = replace(rule, alpha=alpha).fit_union_record(validation)
        except OSRError:
            continue
        rejected = {}
        for name, scores in sets.items():
            # OpenSetModule.decide's rule: a NaN score, never at most its threshold, rejects
            votes = [~(decision_values(scores[s]) <= thresholds[s]) for s in validation]
            rejected[name] = torch.stack(votes).any(0).double().mean().item()
        rows.append({"alpha": alpha, "rejected": rejected})
    return {
        "rule": {k: v for k, v in asdict(rule).items() if k != "alpha"},
        "voting_scores": list(validation),
        "validation_count": len(next(iter(validation.values()))),
        "rows": rows,
    }
