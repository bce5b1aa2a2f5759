"""Training objectives: the loss a model minimizes, the logits it classifies with and the
unknown-ness score that comes with it, picked by the ``objective`` config group.

See ``base`` for the interface; ``build_objective`` makes one from its config.
"""

from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from osr.objectives.arpl import ARPL
from osr.objectives.base import Objective, squared_distances
from osr.objectives.cac import CACLoss
from osr.objectives.center import CenterLoss
from osr.objectives.cross_entropy import CrossEntropy, LabelSmoothing, LogitNorm
from osr.objectives.ii import IILoss
from osr.utils.errors import OSRError

__all__ = [
    "ARPL",
    "CACLoss",
    "CenterLoss",
    "CrossEntropy",
    "IILoss",
    "LabelSmoothing",
    "LogitNorm",
    "Objective",
    "build_objective",
    "squared_distances",
]


def build_objective(
    config: Mapping[str, Any] | None, num_classes: int, feature_dim: int
) -> Objective:
    """The objective of an ``objective`` config (None: cross-entropy, as checkpoints
    written before objectives existed were trained)."""
    if config is None:
        return CrossEntropy(num_classes, feature_dim)
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise OSRError(
            "objective has no _target_: pick one with objective=<name> (conf/objective/), "
            "e.g. objective=arpl."
        )
    try:
        objective = instantiate(config, num_classes=num_classes, feature_dim=feature_dim)
    except InstantiationException as e:
        cause = str(e.__cause__ or e).strip().splitlines()[-1]  # the constructor's own error
        raise OSRError(
            f"objective: could not build {config['_target_']} ({cause}). Check its _target_ "
            "and its parameters (objective.<key>=...)."
        ) from None
    if not isinstance(objective, Objective):
        raise OSRError(f"objective: {config['_target_']} is not an osr.objectives.Objective.")
    return objective
