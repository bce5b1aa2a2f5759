"""The calibration split (issue 33): thresholds are fitted on held-out known images that
nothing else touches; the validation split, disjoint from it, selects the checkpoint."""

import json

import pytest
import torch

from osr.data import MNISTDataModule
from osr.train import train
from osr.utils.errors import OSRError
from tests.conftest import TINY_TRAINING


def rows(dataset) -> set[bytes]:
    return {image.numpy().tobytes() for image in dataset.tensors[0]}


@pytest.mark.parametrize(("size", "count"), [(None, 60), (30, 30), (0, 0)])
def test_the_held_out_images_divide_into_calibration_and_validation(tiny_data, size, count):
    dm = MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=120, calibration_size=size)
    dm.setup()
    assert dm.calibration_count == count
    assert len(dm.val_set) == 120 - count
    train_images, val_images = rows(dm.train_set), rows(dm.val_set)
    assert not train_images & val_images
    if count:
        calibration = rows(dm.calibration_set)
        assert len(dm.calibration_set) == count and dm.calibration_split == "mnist calibration"
        assert not calibration & train_images and not calibration & val_images
        loaded = torch.cat([x for x, _ in dm.calibration_dataloader()])
        assert torch.equal(loaded, dm.calibration_set.tensors[0])
    else:
        assert dm.calibration_set is None and dm.calibration_split == "mnist val"
        loaded = torch.cat([x for x, _ in dm.calibration_dataloader()])
        assert torch.equal(loaded, dm.val_set.tensors[0])
    # the training split is the same whatever the calibration split's size
    same = MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=120, calibration_size=0)
    same.setup()
    assert torch.equal(same.train_set.tensors[0], dm.train_set.tensors[0])


@pytest.mark.parametrize("size", [-1, 120, 500])
def test_a_calibration_split_that_leaves_no_validation_image_is_refused(tiny_data, size):
    words = rf"data.calibration_size={size} must be at least 0 and below data.val_size=120"
    with pytest.raises(OSRError, match=words):
        MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=120, calibration_size=size)


@pytest.mark.slow
def test_the_checkpoint_is_selected_on_the_validation_split_and_calibrated_on_the_other(
    train_cfg, tmp_path
):
    """Validation passes see only the validation split's images, calibration only the
    calibration split's; thresholds.json says which."""
    cfg = train_cfg(
        *TINY_TRAINING, "model=baseline", "data.val_size=200", "trainer.limit_val_batches=null"
    )
    _, made = train(cfg)
    trainer, datamodule = made["trainer"], made["datamodule"]
    assert trainer.num_val_batches == [len(datamodule.val_dataloader())]
    assert len(datamodule.val_set) == 100
    record = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert record["split"] == "mnist calibration"
    assert record["calibration"]["count"] == 100
    assert "used for nothing else" in record["calibration"]["images"]
    assert all(s["count"] == 100 for s in record["scores"].values())
