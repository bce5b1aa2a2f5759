"""The run's resolved config, and the osr version and format that wrote it, in every
checkpoint."""

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from osr.utils.migrations import CONFIG_KEY, stamp


class StoreRunConfig(Callback):
    """Puts the run's resolved config into every checkpoint, so that evaluate, calibrate and
    predict can rebuild the model and data from the checkpoint alone."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
        stamp(checkpoint)
