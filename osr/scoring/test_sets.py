"""Evaluation: the known test split and every OOD set through the calibrated model."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor
from torch.utils.data import DataLoader

from osr.data.datamodules import ImageDataModule
from osr.modules.open_set import OpenSetModule
from osr.scoring.conformal import Conformal
from osr.scoring.metrics import SetOutputs, open_set_metrics
from osr.scoring.operating_curve import operating_curve
from osr.scoring.outputs import collect_scores
from osr.utils.errors import OSRError

log = logging.getLogger(__name__)

IN_DISTRIBUTION = "in_distribution"
OWN = "own"

Loader = tuple[ImageDataModule, DataLoader]


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    outputs: dict[str, SetOutputs]
    known_set: str
    sets: dict[str, Loader]
    operating_curve: dict[str, Any]


@dataclass
class EvaluationSets:
    """The sets an evaluation scores, by role: the known test split, the held-out classes'
    test images and the OOD sets. Their names are distinct (``distinct_oods``), so the
    name-keyed view that metrics.json and scores.npz follow never lets one replace another."""

    known_name: str
    known: Loader
    held_out: dict[str, Loader]
    ood: dict[str, Loader]

    def by_name(self) -> dict[str, Loader]:
        """Known test split first, then held-out classes, then the OOD sets."""
        return {self.known_name: self.known, **self.held_out, **self.ood}


def ood_datamodules(
    ood_cfg: Mapping[str, Any], known: ImageDataModule
) -> dict[str, ImageDataModule]:
    """Instantiate the configured OOD sets, every label UNKNOWN, at the known set's shape
    (channels and size), normalized per protocol.

    Each is attached to ``known``'s trainer, so that under DDP every rank scores its own
    shard of it, as it does for the known test split.
    """
    normalization = ood_cfg.get("normalization", IN_DISTRIBUTION)
    if normalization not in (IN_DISTRIBUTION, OWN):
        raise OSRError(f"ood.normalization={normalization!r}: use {IN_DISTRIBUTION} or {OWN}")
    stats = {}
    if normalization == IN_DISTRIBUTION:
        stats = {"mean": known.hparams.mean, "std": known.hparams.std}
    oods = {
        name: instantiate(
            set_cfg,
            unknown_label=known.num_classes,
            test_limit=ood_cfg.get("limit"),
            seed=known.hparams.seed,  # the run's: osr.evaluate draws the same ood.limit subsets
            channels=known.input_shape[0],
            image_size=known.input_shape[-1],
            **stats,
        )
        for name, set_cfg in (ood_cfg.get("sets") or {}).items()
    }
    for dm in oods.values():
        dm.trainer = known.trainer
    return oods


def distinct_oods(
    known: ImageDataModule, oods: dict[str, ImageDataModule]
) -> dict[str, ImageDataModule]:
    """``oods`` less any copy of the known dataset: its test images are the known test split
    and its held-out classes, never OOD images, so such a set is left out (logged). A set of
    another dataset named like the known test split or its held-out classes is refused, as its
    figures would be filed under theirs."""
    reserved = (known.name, f"{known.name}_unknown")  # the held-out classes' set name
    kept = {}
    for name, dm in oods.items():
        if dm.source_name == known.source_name:
            log.warning(
                "OOD set %s is %s, the known dataset: left out (its test images are the known "
                "test split, not OOD images)",
                name,
                known.source_name,
            )
        elif name in reserved:
            raise OSRError(
                f"ood.sets.{name} ({dm.source_name}) is named like the known {known.name} test "
                f"split or its held-out classes ({' or '.join(reserved)}); rename it in the ood "
                "config."
            )
        else:
            kept[name] = dm
    return kept


def evaluation_loaders(known: ImageDataModule, oods: dict[str, ImageDataModule]) -> EvaluationSets:
    """The known test split, its held-out classes and the OOD sets other than the known
    dataset (``distinct_oods``), set up with their test loaders."""
    oods = distinct_oods(known, oods)
    known.setup("test")
    trainer = known.trainer
    if trainer is None or trainer.local_rank == 0:  # downloads once per machine
        for dm in oods.values():
            dm.prepare_data()
    if trainer is not None:
        trainer.strategy.barrier("ood_prepare_data")
    for dm in oods.values():
        dm.setup("test")
    return EvaluationSets(
        known_name=known.name,
        known=(known, known.test_dataloader()),
        held_out={name: (known, dl) for name, dl in known.unknown_dataloaders().items()},
        ood={name: (dm, dm.test_dataloader()) for name, dm in oods.items()},
    )


def run_sets(module: OpenSetModule, loaders: dict[str, Loader]) -> dict[str, SetOutputs]:
    outputs = {}
    for name, (dm, loader) in loaders.items():
        scores, logits, labels = collect_scores(module, dm, loader)
        predictions = module.decide(logits, scores)
        outputs[name] = SetOutputs(
            scores={k: v.cpu() for k, v in scores.items()},
            logits=logits.cpu(),
            labels=labels.cpu(),
            predictions=predictions.cpu(),
        )
    return outputs


def evaluate(
    module: OpenSetModule,
    known: ImageDataModule,
    ood_cfg: Mapping[str, Any],
    device: torch.device | None = None,
    curve_rule: Conformal | None = None,
    validation_scores: Mapping[str, Tensor] | None = None,
) -> Evaluation:
    """Scores, decisions and the ``metrics.json`` figures for the known test split and
    every OOD set (gathered across DDP ranks), and the voting detectors' operating curve
    under the conformal rule (``curve_rule``, default ``Conformal()``) calibrated on the
    calibration split: on ``validation_scores`` when calibration has just scored it with
    these weights, else scored here."""
    if device is not None:
        module.to(device)
    oods = ood_datamodules(ood_cfg, known)
    loaders = evaluation_loaders(known, oods).by_name()
    outputs = run_sets(module, loaders)
    metrics = open_set_metrics(outputs, known.name, module.num_classes, module.threshold_dict())
    if validation_scores is None:
        validation_scores, _, _ = collect_scores(module, known, known.calibration_dataloader())
    curve = operating_curve(
        curve_rule or Conformal(),
        {name: validation_scores[name].cpu() for name in module.hparams.voting_scores},
        {name: out.scores for name, out in outputs.items()},
    )
    return Evaluation(metrics, outputs, known.name, loaders, curve)
