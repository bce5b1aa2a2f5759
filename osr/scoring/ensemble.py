"""An ensemble of calibrated runs scored as one model (deep ensembles, Lakshminarayanan et
al., NeurIPS 2017): each detector's score is the mean of the members' scores, the class
probabilities the mean of the members' softmax. The members keep their own weights, test
views and fitted detectors; the ensemble gets its own thresholds, fitted by the usual rule
on the averaged scores of the shared validation split.

It offers what calibration, evaluation and the report read of an ``OpenSetModule``, so
``calibrate`` and ``evaluate`` (``osr.scoring``) run on it unchanged.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from osr.modules.open_set import OpenSetModule
from osr.utils.checkpoints import CONFIG_KEY, module_from_checkpoint, read_checkpoint
from osr.utils.errors import OSRError

# the data settings that make two runs' splits the same images (augmentation may differ)
SPLIT_KEYS = ("_target_", "known_classes", "val_size", "seed", "channels", "image_size")
HINTS = {
    "seed": " data.seed (12345 by default) draws the split apart from seed; a run trained when "
    "it followed seed carries its seed as data.seed."
}


def check_members(configs: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> None:
    """Members must share the known classes, the training/validation split and the input
    normalization: a member trained on another split has seen the ensemble's validation
    images, and its thresholds would be fitted on scores of images it learned."""
    first = configs[0]["data"]
    for config, path in zip(configs[1:], paths[1:], strict=True):
        data = config["data"]
        for key in (*SPLIT_KEYS, "mean", "std"):
            if data.get(key) != first.get(key):
                raise OSRError(
                    f"ensemble member {path} has data.{key}={data.get(key)!r} where "
                    f"{paths[0]} has {first.get(key)!r}: members must share the known classes, "
                    "the training/validation split and the input normalization. Retrain it "
                    f"with data.{key}={first.get(key)!r}.{HINTS.get(key, '')}"
                )


class Ensemble(nn.Module):
    """Calibrated ``OpenSetModule`` members scored as one model; the first member's class
    names and voting detectors are the ensemble's, and every detector all members hold is
    averaged."""

    def __init__(self, members: Sequence[OpenSetModule], paths: Sequence[str]) -> None:
        super().__init__()
        if len(members) < 2:
            raise OSRError("an ensemble needs at least two checkpoints; list them in ensemble=")
        first = members[0]
        self.members = nn.ModuleList(members)
        self.hparams = first.hparams
        for member, path in zip(members[1:], paths[1:], strict=True):
            if list(member.hparams.class_names) != list(first.hparams.class_names):
                raise OSRError(
                    f"ensemble member {path} knows classes {list(member.hparams.class_names)}, "
                    f"{paths[0]} knows {list(first.hparams.class_names)}: members must share "
                    "the known classes."
                )
        self.score_names = tuple(
            name for name in first.score_names if all(name in m.detectors for m in members)
        )
        missing = [n for n in first.hparams.voting_scores if n not in self.score_names]
        if missing:
            raise OSRError(
                f"voting detectors {missing} of {paths[0]} are missing from another ensemble "
                "member: add them to every member (`python -m osr.calibrate ckpt_path=... "
                "detectors=...`)."
            )
        for member, path in zip(members, paths, strict=True):
            unfitted = [
                f"detector {name}"
                for name in self.score_names
                if member.detectors[name].requires_fit and not member.detectors[name].is_fitted
            ]
            if not member.objective.is_fitted:
                unfitted.append(f"objective {type(member.objective).__name__}")
            if unfitted:
                raise OSRError(
                    f"ensemble member {path} has unfitted {', '.join(unfitted)}: calibrate it "
                    f"first (`python -m osr.calibrate ckpt_path={path}`)."
                )
        self.detectors: dict[str, Any] = {}  # the members' are fitted; nothing left to fit
        self.thresholds: dict[str, float] = {}

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def unknown_label(self) -> int:
        return self.members[0].unknown_label

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def objective(self) -> Any:
        """The first member's: fitted, as every member's is, so calibration has nothing to
        fit (``osr.scoring.outputs.fit_detectors`` asks)."""
        return self.members[0].objective

    def to(self, device: torch.device | str) -> "Ensemble":
        for member in self.members:
            member.to(device)  # LightningModule.to keeps its device attribute in step
        return self

    def logits_and_scores(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The log of the members' mean class probabilities, and each detector's mean score."""
        probabilities, scores = [], {name: [] for name in self.score_names}
        for member in self.members:
            logits, member_scores = member.logits_and_scores(x)
            probabilities.append(logits.float().softmax(dim=1))
            for name in self.score_names:
                scores[name].append(member_scores[name])
        mean = torch.stack(probabilities).mean(dim=0).clamp_min(torch.finfo(torch.float32).tiny)
        return mean.log(), {name: torch.stack(s).mean(dim=0) for name, s in scores.items()}

    @property
    def is_calibrated(self) -> bool:
        return all(name in self.thresholds for name in self.hparams.voting_scores)

    # the module's own, reading only thresholds, score_names, hparams and unknown_label
    threshold_dict = OpenSetModule.threshold_dict
    set_thresholds = OpenSetModule.set_thresholds
    decide = OpenSetModule.decide


def load_ensemble(paths: Sequence[str]) -> tuple["Ensemble", dict[str, Any]]:
    """The ensemble of the checkpoints at ``paths`` and the first one (whose data, OOD and
    calibration settings the ensemble's run takes)."""
    checkpoints = [read_checkpoint(path) for path in paths]
    check_members([ckpt[CONFIG_KEY] for ckpt in checkpoints], paths)
    members = [module_from_checkpoint(ckpt) for ckpt in checkpoints]
    return Ensemble(members, paths), checkpoints[0]
