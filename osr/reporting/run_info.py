"""What a run was, in words, for report.md."""

from typing import Any

from omegaconf import DictConfig


def describe(cfg: DictConfig, checkpoint: str | None) -> dict[str, Any]:
    data = cfg.data
    known = data.get("known_classes")
    ood = cfg.get("ood") or {}
    rule = cfg.get("calibration") or {}
    # checkpoints from before objectives have none in their config: they trained with CE
    objective = cfg.get("objective") or {"_target_": "osr.objectives.CrossEntropy"}
    settings = ", ".join(f"{k}={v}" for k, v in objective.items() if k != "_target_")
    return {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "objective": objective["_target_"].rsplit(".", 1)[-1]
        + (f" ({settings})" if settings else ""),
        "voting scores": ", ".join(cfg.model.voting_scores),
        "data": data._target_.rsplit(".", 1)[-1]
        + (f" (known classes {list(known)})" if known is not None else " (all classes known)"),
        "OOD sets": ", ".join(ood.get("sets") or {}) or "none",
        "OOD normalization": ood.get("normalization", "in_distribution"),
        "calibration": ", ".join(f"{k}={v}" for k, v in rule.items() if k != "_target_")
        + f" ({rule.get('_target_', '?').rsplit('.', 1)[-1]})",
        "seed": cfg.get("seed"),
        "checkpoint": checkpoint or "last weights (no checkpoint)",
    }
