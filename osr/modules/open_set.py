"""What every osr LightningModule shares: metrics, optimizers, scores and the open-set decision."""

import math
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from osr.errors import NotCalibratedError, OSRError
from osr.labels import unknown_label
from osr.resume import load_metric_states, metric_states

TRAIN_METRICS_KEY = "osr_train_metrics"  # checkpoint key of the epoch's accumulated figures


class OpenSetModule(pl.LightningModule):
    """A classifier over K known classes that can also answer UNKNOWN (label K).

    Subclasses name the scores they support in ``score_names`` and implement
    ``logits_and_scores(x) -> (logits, scores)`` and ``_loss(x, y) -> (loss, logits, extra logs)``.
    Thresholds live in the ``thresholds`` buffer (NaN until calibrated), aligned with
    ``score_names``, so every checkpoint carries them.
    """

    score_names: tuple[str, ...] = ()
    loss_terms: tuple[str, ...] = ()  # parts of the loss that ``_loss`` also reports

    def __init__(
        self,
        optimizer: dict,
        class_names: list[str],
        voting_scores: list[str],
        scheduler: dict | None = None,
    ) -> None:
        super().__init__()
        unsupported = [s for s in voting_scores if s not in self.score_names]
        if unsupported or not voting_scores:
            raise OSRError(
                f"model.voting_scores={list(voting_scores)}: {type(self).__name__} supports "
                f"{list(self.score_names)}; pick one or more of those."
            )
        self.register_buffer("thresholds", torch.full((len(self.score_names),), math.nan))
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        num_classes = len(class_names)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_terms = nn.ModuleDict({name: MeanMetric() for name in self.loss_terms})
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run remembers it
        self._saved_train_metrics: dict[str, Any] | None = None

    def _finish_init(self, channels_last: bool) -> None:
        """Called by subclasses once their networks exist."""
        if channels_last:
            # NHWC lets oneDNN run these small convs and max-pools about 2x faster on CPU.
            self.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return len(self.hparams.class_names)

    @property
    def unknown_label(self) -> int:
        return unknown_label(self.num_classes)

    # --- open-set interface -------------------------------------------------------------
    def logits_and_scores(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def scores(self, x: Tensor) -> dict[str, Tensor]:
        """Every supported score of each image of the batch (higher = more unknown)."""
        return self.logits_and_scores(x)[1]

    @property
    def is_calibrated(self) -> bool:
        return not torch.isnan(self.thresholds[self._voting_indices]).any().item()

    @property
    def _voting_indices(self) -> list[int]:
        return [self.score_names.index(s) for s in self.hparams.voting_scores]

    def threshold_dict(self) -> dict[str, float]:
        return dict(zip(self.score_names, self.thresholds.tolist(), strict=True))

    def set_thresholds(self, thresholds: dict[str, float]) -> None:
        values = [thresholds[name] for name in self.score_names]
        self.thresholds.copy_(torch.as_tensor(values, dtype=self.thresholds.dtype))

    def decide(
        self,
        logits: Tensor,
        scores: dict[str, Tensor],
        thresholds: dict[str, float | Tensor] | None = None,
    ) -> Tensor:
        """Labels in 0..K: UNKNOWN (K) when any voting score exceeds its threshold (the
        module's calibrated ones unless ``thresholds`` are given)."""
        if thresholds is None:
            if not self.is_calibrated:
                raise NotCalibratedError(
                    f"{type(self).__name__} has no thresholds for "
                    f"{list(self.hparams.voting_scores)}: calibrate it first (`python -m "
                    "osr.calibrate ckpt_path=...`, or train with the threshold_calibration "
                    "callback)."
                )
            thresholds = dict(zip(self.score_names, self.thresholds, strict=True))
        labels = logits.argmax(dim=1)
        rejected = torch.zeros_like(labels, dtype=torch.bool)
        for name in self.hparams.voting_scores:
            rejected |= scores[name] > thresholds[name]
        return torch.where(rejected, torch.full_like(labels, self.unknown_label), labels)

    @torch.no_grad()
    def predict_open(self, x: Tensor) -> Tensor:
        logits, scores = self.logits_and_scores(x)
        return self.decide(logits, scores)

    # --- training -------------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss, logits, extra = self._loss(x, y)
        if not torch.isfinite(loss):
            raise OSRError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step} (batch {batch_idx}); training stopped rather than go on "
                "with broken weights. Lower model.optimizer.lr, or resume from the last good "
                "checkpoint (checkpoints/last.ckpt)."
            )
        n = len(y)
        self.train_loss.update(loss.detach(), n)
        self.train_acc.update(logits.detach(), y)
        for name, value in extra.items():
            self.train_terms[name].update(value.detach(), n)
        return loss

    def train_epoch_metrics(self) -> dict[str, Tensor]:
        """The training epoch's loss, accuracy and loss terms so far (all ranks).

        Steps only accumulate them: ``self.log`` of a metric in every step cost about a third
        of a ConvNet step on CPU. ``on_train_epoch_end`` logs them once.
        """
        metrics = {"train/loss": self.train_loss.compute(), "train/acc": self.train_acc.compute()}
        metrics.update({f"train/{name}": m.compute() for name, m in self.train_terms.items()})
        return metrics

    def on_train_epoch_end(self) -> None:
        metrics = self.train_epoch_metrics()
        self.log("train/acc", metrics.pop("train/acc"), prog_bar=True)
        self.log_dict(metrics)
        for metric in self._train_metrics().values():
            metric.reset()

    def _train_metrics(self) -> dict[str, Metric]:
        terms = {f"term/{name}": m for name, m in self.train_terms.items()}
        return {"loss": self.train_loss, "acc": self.train_acc, **terms}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # kept apart from the state_dict, which evaluate, calibrate and predict load strictly
        checkpoint[TRAIN_METRICS_KEY] = {
            "epoch": self.current_epoch,
            "states": metric_states(self._train_metrics()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._saved_train_metrics = checkpoint.get(TRAIN_METRICS_KEY)

    def on_train_start(self) -> None:
        """Continue the resumed epoch's training figures. Lightning resumes a checkpoint saved
        at an epoch's last batch in the next epoch, skipping that epoch's end: then the saved
        figures belong to an epoch that is over and are dropped."""
        saved, self._saved_train_metrics = self._saved_train_metrics, None
        if saved and saved["epoch"] == self.current_epoch and self.trainer.is_global_zero:
            load_metric_states(self._train_metrics(), saved["states"])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss, logits, extra = self._loss(x, y)
        self.val_loss(loss)
        self.val_acc(logits, y)
        n = len(y)
        self.log(
            "val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n
        )
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in extra.items():
            self.log(
                f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=n
            )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a couple of batches, not an epoch: not a best
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss, logits, _ = self._loss(x, y)
        self.test_loss(loss)
        self.test_acc(logits, y)
        n = len(y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, batch_size=n)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler_cfg = dict(self.hparams.scheduler)
        monitor = scheduler_cfg.pop("monitor", "val/loss")
        interval = scheduler_cfg.pop("interval", "epoch")
        scheduler = instantiate(scheduler_cfg)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": interval},
        }
