"""Callbacks the tests inject into real training runs through the config."""

import json
import os
import signal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor


class KillAtStep(Callback):
    """SIGKILL this process when ``step`` optimizer steps are done: a crash mid-epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillInValidation(Callback):
    """SIGKILL this process when validation starts after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)


class BatchLabels(Callback):
    """Appends (epoch, labels of the batch) of every training step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.current_epoch, batch[1].tolist()]) + "\n")


class StepLosses(Callback):
    """Records (epoch, loss, batch size) of every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, int]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.steps.append((trainer.current_epoch, float(outputs["loss"]), len(batch[1])))


class WeightsPerEpoch(Callback):
    """Copies of the module's weights and its val/acc at the end of every validation epoch."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, Tensor]] = {}
        self.val_acc: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        state = pl_module.state_dict()
        self.weights[trainer.current_epoch] = {k: v.detach().clone() for k, v in state.items()}
        self.val_acc[trainer.current_epoch] = float(trainer.callback_metrics["val/acc"])
