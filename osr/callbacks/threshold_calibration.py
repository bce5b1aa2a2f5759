"""The callback that calibrates after fit: thresholds.json, logged figures, checkpoints."""

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from osr.modules.open_set import OpenSetModule
from osr.scoring.calibration import calibrate
from osr.scoring.thresholds import ThresholdRule
from osr.utils.checkpoints import restore_best_weights, write_thresholds
from osr.utils.io import write_json
from osr.utils.phases import phase

log = logging.getLogger(__name__)


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
        # every detector's scores of the calibration split, for the weights last calibrated
        self.validation_scores: dict[str, Tensor] | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with phase("checkpoint_reload"):
            best = restore_best_weights(trainer, pl_module)
        self._calibrate(trainer, pl_module, best)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._calibrate(trainer, pl_module, self.checkpoint)

    def _calibrate(
        self, trainer: pl.Trainer, pl_module: OpenSetModule, checkpoint: str | None
    ) -> None:
        with phase("calibration"):
            calibration = calibrate(pl_module, trainer.datamodule, self.rule)
        self.result, self.validation_scores = calibration.record, calibration.validation_scores
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
