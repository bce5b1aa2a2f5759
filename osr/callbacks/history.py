"""Per-epoch training curves, kept in the checkpoint so a later evaluation can plot them."""

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from osr.modules import OpenSetModule

CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class EpochHistory(Callback):
    """Records the epoch-level train and val metrics at the end of every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: OpenSetModule) -> None:
        if trainer.sanity_checking:
            return
        # Lightning runs this hook before the module's, which logs the training figures.
        metrics = {**trainer.callback_metrics, **pl_module.train_epoch_metrics()}
        row = {k: float(metrics[k]) for k in CURVE_KEYS if k in metrics}
        self.epochs.append({"epoch": trainer.current_epoch, **row})

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict["epochs"])
