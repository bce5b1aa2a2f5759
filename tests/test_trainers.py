"""The trainer configs build the real Lightning Trainer they promise."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from osr.utils.config import CONFIG_DIR


def build_trainer(tmp_path: Path, *overrides: str) -> pl.Trainer:
    """The ``trainer`` group of the real train config, as composed by ``osr.train``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])
    return instantiate(cfg.trainer)


def test_ddp_config_builds_a_two_process_ddp_trainer(tmp_path):
    trainer = build_trainer(tmp_path, "trainer=ddp", "trainer.accelerator=cpu")
    assert isinstance(trainer.strategy, DDPStrategy)
    assert isinstance(trainer.accelerator, CPUAccelerator)
    assert (trainer.num_devices, trainer.num_nodes, trainer.world_size) == (2, 1, 2)
    assert trainer.strategy._get_process_group_backend() == "gloo"  # as README says, on CPU
    # the DataModules shard their own batches: Lightning must not wrap them in its sampler
    assert not trainer._accelerator_connector.use_distributed_sampler


def test_gpu_config_builds_a_one_gpu_trainer_or_gets_lightnings_refusal(tmp_path):
    """With a GPU, a one-GPU trainer in bf16. Without one, Lightning's own refusal: a config
    that asked for something else (or for nothing Lightning knows) would fail differently."""
    if not torch.cuda.is_available():
        with pytest.raises(InstantiationException, match="No supported gpu backend found"):
            build_trainer(tmp_path, "trainer=gpu")
        return
    trainer = build_trainer(tmp_path, "trainer=gpu")
    assert isinstance(trainer.accelerator, CUDAAccelerator)
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    assert trainer.num_devices == 1 and trainer.strategy.root_device.type == "cuda"
    assert trainer.precision == "bf16-mixed"
