"""Evaluation: the known test split and every OOD set through the calibrated model."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from osr.data.datamodules import ImageDataModule
from osr.modules.open_set import OpenSetModule
from osr.scoring.conformal import Conformal, operating_curve
from osr.scoring.metrics import SetOutputs, open_set_metrics
from osr.scoring.outputs import collect_scores
from osr.utils.errors import OSRError

IN_DISTRIBUTION = "in_distribution"
OWN = "own"


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    outputs: dict[str, SetOutputs]
    known_set: str
    sets: dict[str, tuple[ImageDataModule, DataLoader]]
    operating_curve: dict[str, Any]


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


def evaluation_loaders(
    known: ImageDataModule, oods: dict[str, ImageDataModule]
) -> dict[str, tuple[ImageDataModule, DataLoader]]:
    """Known test split first, then held-out classes, then the OOD sets."""
    known.setup("test")
    loaders = {known.name: (known, known.test_dataloader())}
    loaders.update({name: (known, dl) for name, dl in known.unknown_dataloaders().items()})
    trainer = known.trainer
    if trainer is None or trainer.local_rank == 0:  # downloads once per machine
        for dm in oods.values():
            dm.prepare_data()
    if trainer is not None:
        trainer.strategy.barrier("ood_prepare_data")
    for name, dm in oods.items():
        dm.setup("test")
        loaders[name] = (dm, dm.test_dataloader())
    return loaders


def run_sets(
    module: OpenSetModule, loaders: dict[str, tuple[ImageDataModule, DataLoader]]
) -> dict[str, SetOutputs]:
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
) -> Evaluation:
    """Scores, decisions and the ``metrics.json`` figures for the known test split and
    every OOD set (gathered across DDP ranks), and the voting detectors' operating curve
    under the conformal rule (``curve_rule``, default ``Conformal()``) calibrated on the
    validation split."""
    if device is not None:
        module.to(device)
    oods = ood_datamodules(ood_cfg, known)
    loaders = evaluation_loaders(known, oods)
    outputs = run_sets(module, loaders)
    metrics = open_set_metrics(outputs, known.name, module.num_classes, module.threshold_dict())
    validation, _, _ = collect_scores(module, known, known.val_dataloader())
    curve = operating_curve(
        curve_rule or Conformal(),
        {name: validation[name].cpu() for name in module.hparams.voting_scores},
        {name: out.scores for name, out in outputs.items()},
    )
    return Evaluation(metrics, outputs, known.name, loaders, curve)
