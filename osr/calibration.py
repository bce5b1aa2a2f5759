"""After fit: detectors fitted on the training split, then thresholds on the validation split.

Threshold rules are plain objects (``fit(scores) -> threshold``); the ``ThresholdCalibration``
callback takes the best weights, fits the detectors that need it on the known training
split, runs the validation split, gathers the scores of every rank, fits one threshold per
detector and stores thresholds and fitted detectors in the module and in the run's
checkpoints that hold those weights.
"""

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader

from osr.checkpoints import restore_best_weights, write_thresholds
from osr.data.datamodules import ImageDataModule
from osr.detectors import ModelOutputs, fit_needs
from osr.distributed import gather_cat
from osr.errors import OSRError
from osr.io import write_json
from osr.modules.open_set import OpenSetModule

log = logging.getLogger(__name__)


class ThresholdRule(Protocol):
    name: str

    def fit(self, scores: Tensor) -> float: ...


@dataclass
class MeanStd:
    """mean + k * std of the known images' scores (population std, numpy's default)."""

    k: float = 3.0
    name: str = "mean_std"

    def fit(self, scores: Tensor) -> float:
        s = scores.double()
        return (s.mean() + self.k * s.std(correction=0)).item()


@dataclass
class Quantile:
    """The q-quantile of the known images' scores: a fraction q of them is kept as known."""

    q: float = 0.95
    name: str = "quantile"

    def __post_init__(self) -> None:
        if not 0.0 < self.q <= 1.0:
            raise OSRError(f"calibration.q={self.q} must lie in (0, 1], e.g. calibration.q=0.95")

    def fit(self, scores: Tensor) -> float:
        return torch.quantile(scores.double(), self.q).item()


def _in_dataset_order(loader: DataLoader, device: torch.device) -> Tensor:
    """The permutation that puts outputs gathered from every rank back in dataset order (each
    rank ran its own shard of ``loader``, ``ShardedBatchSampler``)."""
    return gather_cat(torch.cat(list(loader.sampler)).to(device)).argsort()


@torch.no_grad()  # not inference_mode: input-gradient detectors (ODIN) turn gradients on
def collect_scores(
    module: OpenSetModule, datamodule: ImageDataModule, loader: DataLoader
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Scores of every detector, logits and labels of every image of ``loader``, gathered from
    all ranks, in dataset order."""
    was_training = module.training
    module.eval()
    scores: dict[str, list[Tensor]] = {name: [] for name in module.score_names}
    logits, labels = [], []
    for x, y in datamodule.iterate(loader, module.device):
        batch_logits, batch_scores = module.logits_and_scores(x)
        for name in module.score_names:
            scores[name].append(batch_scores[name])
        logits.append(batch_logits)
        labels.append(y)
    module.train(was_training)
    order = _in_dataset_order(loader, module.device)
    return (
        {name: gather_cat(torch.cat(values))[order] for name, values in scores.items()},
        gather_cat(torch.cat(logits))[order],
        gather_cat(torch.cat(labels))[order],
    )


@torch.no_grad()
def fit_detectors(module: OpenSetModule, datamodule: ImageDataModule) -> list[str]:
    """Fit the module's detectors that need it and are not fitted yet on the known TRAINING
    split (never validation, test or OOD data), gathered from all ranks; returns their names.
    Only what fitting needs of each batch is kept (``fit_needs``)."""
    to_fit = {n: d for n, d in module.detectors.items() if d.requires_fit and not d.is_fitted}
    if not to_fit:
        return []
    needs = fit_needs(to_fit)
    loader = datamodule.train_eval_dataloader()
    was_training = module.training
    module.eval()
    parts = [
        replace(module.model_outputs(x, needs).keep(needs), labels=y)
        for x, y in datamodule.iterate(loader, module.device)
    ]
    module.train(was_training)
    order = _in_dataset_order(loader, module.device)
    outputs = ModelOutputs.cat(parts)
    gathered = {
        name: gather_cat(getattr(outputs, name))[order]
        for name in ("logits", "features", "images", "recon", "labels")
        if getattr(outputs, name) is not None
    }
    for detector in to_fit.values():
        detector.fit(replace(outputs, **gathered))
    return list(to_fit)


def fit_thresholds(scores: dict[str, Tensor], rule: ThresholdRule) -> dict[str, dict[str, float]]:
    """One threshold per score, with the statistics it was fitted on."""
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
        thresholds = {name: rule.fit(scores[name][fit_on]) for name in module.hparams.voting_scores}
        part = {name: values[judged] for name, values in scores.items()}
        decisions[judged] = module.decide(logits[judged], part, thresholds)
    return decisions


def calibrate(
    module: OpenSetModule, datamodule: ImageDataModule, rule: ThresholdRule
) -> dict[str, Any]:
    """Fit thresholds on the validation split and store them in ``module``.

    Also reports how the calibrated model does on known images it was not calibrated on: the
    share rejected as UNKNOWN and the (K+1)-way accuracy (a rejection counts as an error), each
    validation image judged with thresholds cross-fitted on the other half of the split. These
    need no OOD data, so a hyperparameter search may select on them without a threshold that
    only fits its own data looking good.
    """
    newly_fitted = fit_detectors(module, datamodule)
    scores, logits, labels = collect_scores(module, datamodule, datamodule.val_dataloader())
    fitted = fit_thresholds(scores, rule)
    module.set_thresholds({name: f["threshold"] for name, f in fitted.items()})
    decisions = cross_fitted_decisions(module, rule, logits, scores)
    return {
        "rule": asdict(rule),
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


class ThresholdCalibration(Callback):
    """After fit: best weights -> validation scores -> thresholds in the module and in the
    checkpoints holding those weights (``best.ckpt``; ``last.ckpt`` only if it is the same).

    Writes ``thresholds.json`` to ``output_dir`` and logs ``calib/<score>`` thresholds and
    ``calib/val_known_rejection_rate`` / ``calib/val_open_set_accuracy`` to every logger.
    A standalone ``trainer.validate`` (``osr.calibrate``) calibrates the module as it is.
    """

    def __init__(
        self, rule: ThresholdRule, output_dir: str | None = None, checkpoint: str | None = None
    ) -> None:
        self.rule = rule
        self.output_dir = Path(output_dir) if output_dir else None
        self.checkpoint = checkpoint  # where standalone-validated weights came from
        self.result: dict[str, Any] | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._calibrate(trainer, pl_module, restore_best_weights(trainer, pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._calibrate(trainer, pl_module, self.checkpoint)

    def _calibrate(
        self, trainer: pl.Trainer, pl_module: OpenSetModule, checkpoint: str | None
    ) -> None:
        self.result = calibrate(pl_module, trainer.datamodule, self.rule)
        self.result["checkpoint"] = checkpoint
        for logger in trainer.loggers:
            logger.log_metrics(self.logged_metrics, step=trainer.global_step)
        self._save(trainer, pl_module)
        trainer.strategy.barrier("threshold_calibration")

    @property
    def logged_metrics(self) -> dict[str, float]:
        """``calib/<score>`` thresholds and ``calib/val_<figure>`` of the last calibration."""
        if self.result is None:
            return {}
        thresholds = {f"calib/{name}": f["threshold"] for name, f in self.result["scores"].items()}
        figures = {f"calib/val_{name}": v for name, v in self.result["validation"].items()}
        return thresholds | figures

    @rank_zero_only
    def _save(self, trainer: pl.Trainer, pl_module: OpenSetModule) -> None:
        paths = {
            path
            for callback in trainer.checkpoint_callbacks
            for path in (callback.best_model_path, callback.last_model_path)
        }
        for path in sorted(p for p in paths if p and Path(p).is_file()):
            if not write_thresholds(path, pl_module):
                log.info("%s holds other weights than the calibrated ones: no thresholds", path)
        if self.output_dir is not None:
            write_json(self.output_dir / "thresholds.json", self.result)
