"""trainer.precision reaches the training step: bf16 autocast runs on the CPU too."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from osr.train import train


class ConvOutputDtypes(pl.Callback):
    """Records the dtype of every training-time output of the model's first convolution."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        conv = next(m for m in pl_module.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(
            lambda module, args, out: self.dtypes.add(out.dtype) if module.training else None
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)]
)
def test_training_runs_in_the_configured_precision(train_cfg, precision, dtype):
    metrics, objects = train(
        train_cfg(
            "model=mlae",
            "trainer.fast_dev_run=true",
            f"trainer.precision={precision}",
            "+callbacks.dtypes._target_=tests.test_precision.ConvOutputDtypes",
        )
    )
    (recorder,) = [c for c in objects["trainer"].callbacks if isinstance(c, ConvOutputDtypes)]
    assert recorder.dtypes == {dtype}
    assert 0 <= metrics["test/acc"] <= 1
    assert all(p.dtype == torch.float32 for p in objects["model"].parameters())
