"""osr.evaluate and osr.calibrate read each dataset where training did when the run named a
data_dir of its own, and from this machine's paths.data_dir otherwise (issue 32)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from osr.evaluate import ood_config
from osr.utils.checkpoints import datamodule_from_checkpoint
from osr.utils.config import CONFIG_DIR

HERE = "/this/machine/data"  # paths.data_dir of the evaluating process
TRAINED_DEFAULT = "/training/machine/data"  # the run's paths.data_dir


def checkpoint(data_dir: str) -> dict:
    """The config part of a checkpoint whose run read MNIST and its OOD set from ``data_dir``."""
    mnist = {"_target_": "osr.data.MNISTDataModule", "data_dir": data_dir, "mean": 0.13}
    mnist |= {"std": 0.31, "download": False}
    fashion = mnist | {"_target_": "osr.data.FashionMNISTDataModule"}
    ood = {"sets": {"fashion_mnist": fashion}, "normalization": "in_distribution", "limit": None}
    config = {"data": mnist, "ood": ood, "paths": {"data_dir": TRAINED_DEFAULT}}
    return {"osr_config": config}


def composed(config_name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, ["ckpt_path=x.ckpt", f"paths.data_dir={HERE}", *overrides])


@pytest.mark.parametrize(
    ("trained_from", "overrides", "expected"),
    [
        # data.data_dir=/own/data in training: before, HERE (the checkpoint's was replaced)
        ("/own/data", [], "/own/data"),
        (TRAINED_DEFAULT, [], HERE),  # the paths default: this machine's
        ("/own/data", ["data.data_dir=/asked"], "/asked"),  # named here: it wins
    ],
)
@pytest.mark.parametrize("config_name", ["evaluate", "calibrate"])
def test_a_dataset_is_read_where_the_run_said(config_name, trained_from, overrides, expected):
    cfg = composed(config_name, *overrides)
    ckpt = checkpoint(trained_from)
    datamodule = datamodule_from_checkpoint(ckpt, cfg.data, cfg.paths.data_dir)
    assert datamodule.data_dir == Path(expected)
    if config_name == "evaluate":
        assert ood_config(cfg, ckpt).sets.fashion_mnist.data_dir == expected
