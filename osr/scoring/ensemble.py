"""An ensemble of calibrated runs scored as one model (deep ensembles, Lakshminarayanan et
al., NeurIPS 2017). Its class probabilities are the mean of the members' softmax, and its
logits their log. The members keep their own weights, test views and fitted detectors; the
ensemble gets its own thresholds, fitted by the usual rule on its scores of the shared
calibration split.

Detectors of the class probabilities alone (``msp``, ``gen``, ``entropy``: they read only the
logits, are fitted on nothing and ignore a constant added to an image's logits) are computed
from the mean predictive distribution. Every other detector (``max_logit`` and ``energy``,
which read the logits' scale that a mean of probabilities lacks: the energy of normalized
log-probabilities is 0; features, reconstructions, an objective's score) is averaged over the
members, each member's score first put on a common scale by ``normal_scores``.

It offers what calibration, evaluation and the report read of an ``OpenSetModule``, so
``calibrate`` and ``evaluate`` (``osr.scoring``) run on it once ``fit_scales`` has run.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from osr.data.datamodules import ImageDataModule
from osr.detectors import Detector, ModelOutputs
from osr.modules.open_set import OpenSetModule
from osr.scoring.outputs import collect_scores
from osr.utils.checkpoints import CONFIG_KEY, module_from_checkpoint, read_checkpoint
from osr.utils.errors import OSRError

# the data settings that make two runs' splits the same images (augmentation may differ)
SPLIT_KEYS = (
    "_target_",
    "known_classes",
    "val_size",
    "calibration_size",
    "seed",
    "channels",
    "image_size",
)
HINTS = {
    "seed": " data.seed follows seed unless set: train the seeds to ensemble with one "
    "data.seed, e.g. python -m osr.train -m seed=1,2,3 data.seed=12345."
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


def reads_probabilities(detector: Detector, num_classes: int) -> bool:
    """Whether ``detector`` scores a function of the class probabilities alone: it reads only
    the logits, is fitted on nothing, and adding a constant to an image's logits leaves its
    score unchanged (msp, gen, entropy; not max_logit or energy)."""
    if detector.needs != {"logits"} or detector.requires_fit:
        return False
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(16, num_classes, generator=generator)
    shifted = logits + 16 * torch.randn(16, 1, generator=generator)
    scores = [detector.score(ModelOutputs(logits=z)) for z in (logits, shifted)]
    return torch.allclose(*scores, rtol=1e-4, atol=1e-5)


def normal_scores(calibration: Tensor, scores: Tensor) -> Tensor:
    """Each member's scores as the standard normal quantile of their mid-rank among the
    member's sorted validation scores: ``calibration`` (M, n) sorted, ``scores`` (M, B).

    The mid-rank u = (#{below} + #{at or below} + 1) / (2n + 2) is exact with ties and
    infinite scores, and a known image's u is about uniform whatever the member's objective,
    scale or offset; on the validation images themselves it is k/(n + 1), so their normal
    scores are van der Waerden's. Why not the plain mid-rank u: bounded in (0, 1), it would
    place the mean + 3 * std rule's threshold (experiment=seed_repro) above every score; its
    normal quantile keeps that rule's meaning. Why not standardization ((s - mean) / std): a
    member's mean and std describe its known scores' bulk, not the tail where unknown images
    lie, so a member with tightly packed known scores (a saturated softmax) would still
    dominate there, and an infinite score breaks it. The price: a score beyond all n
    validation scores of its member gets the same value (3.9 for n = 10,000) however far
    beyond it lies; the other members still separate such images.
    """
    below = torch.searchsorted(calibration, scores, side="left")
    at_or_below = torch.searchsorted(calibration, scores, side="right")
    n = calibration.shape[1]
    return torch.special.ndtri((below + at_or_below + 1).double() / (2 * n + 2))


class Ensemble(nn.Module):
    """Calibrated ``OpenSetModule`` members scored as one model; the first member's class
    names and voting detectors are the ensemble's, and so is every detector all members
    hold."""

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
        # computed from the mean predictive distribution with the first member's detector
        self.predictive = tuple(
            name
            for name in self.score_names
            if reads_probabilities(first.detectors[name], first.num_classes)
        )
        self.averaged = tuple(name for name in self.score_names if name not in self.predictive)
        # each averaged detector's validation scores, (members, images), sorted: fit_scales
        self.calibration: dict[str, Tensor] = {}
        self.detectors: dict[str, Any] = {}  # the members' are fitted; nothing left to fit
        self.thresholds: dict[str, float] = {}
        self.conformal_reference: dict[str, Any] = {}

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
        self.calibration = {name: s.to(device) for name, s in self.calibration.items()}
        return self

    def fit_scales(self, datamodule: ImageDataModule) -> dict[str, Any]:
        """Keep each member's scores of the validation split (known images, never test or OOD
        data, and apart from the calibration split where there is one, so that the common
        scale is a fixed map for the calibration images) for ``normal_scores``; returns what
        thresholds.json records."""
        loader = datamodule.val_dataloader()
        member_scores = [collect_scores(m, datamodule, loader)[0] for m in self.members]
        self.calibration = {
            name: torch.stack([s[name].double() for s in member_scores]).sort(dim=1).values
            for name in self.averaged
        }
        return {
            "mean_probabilities": list(self.predictive),
            "averaged": list(self.averaged),
            "scale": "normal quantile of the mid-rank among the member's validation scores",
            "split": f"{datamodule.name} val",
            "count": len(member_scores[0][self.score_names[0]]),
        }

    def logits_and_scores(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The log of the members' mean class probabilities, and each detector's score."""
        if self.averaged and not self.calibration:
            raise OSRError(
                "the ensemble's members are not yet on a common scale: run "
                "Ensemble.fit_scales(datamodule) on the validation split first."
            )
        probabilities, scores = [], {name: [] for name in self.averaged}
        for member in self.members:
            logits, member_scores = member.logits_and_scores(x)
            probabilities.append(logits.float().softmax(dim=1))
            for name in self.averaged:
                scores[name].append(member_scores[name].double())
        mean = torch.stack(probabilities).mean(dim=0).clamp_min(torch.finfo(torch.float32).tiny)
        logits = mean.log()
        outputs = ModelOutputs(logits=logits)
        first = self.members[0].detectors
        ensemble = {name: first[name].score(outputs) for name in self.predictive}
        for name, values in scores.items():
            normal = normal_scores(self.calibration[name], torch.stack(values))
            ensemble[name] = normal.mean(dim=0).float()
        return logits, {name: ensemble[name] for name in self.score_names}

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
