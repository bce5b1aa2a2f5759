"""Datasets of one's own (osr.data.FolderDataModule): IDX files and image folders read as
written, and every mistake in them named with its path and fix."""

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.datasets.mnist import read_image_file

from osr.data import FolderDataModule
from osr.data.local import write_idx
from osr.utils.errors import DatasetCorruptError, DatasetNotFoundError, OSRError

CLASSES = ["a", "b", "c"]


def idx_folder(root: Path, labels: torch.Tensor, side: int = 12) -> torch.Tensor:
    images = torch.randint(0, 256, (len(labels), side, side), dtype=torch.uint8)
    for prefix in ("train", "t10k"):
        write_idx(root / "mine" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "mine" / f"{prefix}-labels-idx1-ubyte", labels)
    return images


def module(root: Path, **kwargs) -> FolderDataModule:
    settings = {"layout": "idx", "classes": CLASSES, "mean": 0.5, "std": 0.25, "val_size": 10}
    return FolderDataModule(name="mine", data_dir=str(root), **{**settings, **kwargs})


def test_write_idx_writes_what_torchvision_reads(tmp_path):
    images = torch.randint(0, 256, (5, 7, 7), dtype=torch.uint8)
    write_idx(tmp_path / "x-idx3-ubyte", images)
    assert torch.equal(read_image_file(str(tmp_path / "x-idx3-ubyte")), images)


def test_an_idx_folder_is_read_at_its_own_shape(tmp_path):
    labels = torch.arange(30, dtype=torch.uint8) % 3
    images = idx_folder(tmp_path, labels)
    dm = module(tmp_path)
    dm.setup()
    assert dm.input_shape == (1, 12, 12) and dm.class_names == CLASSES
    x, y = dm.test_set.tensors
    assert torch.equal(x[:, 0], images) and torch.equal(y, labels.long())


def test_an_image_folder_takes_its_classes_from_the_folders(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "mine" / split / c).mkdir(parents=True)
            for i in range(12):
                image = torch.full((3, 16, 16), 10 * i, dtype=torch.uint8)
                torchvision.io.write_png(image, str(tmp_path / "mine" / split / c / f"{i}.png"))
    dm = module(tmp_path, layout="images", classes=None, mean=[0.5] * 3, std=[0.25] * 3)
    dm.setup()
    assert dm.input_shape == (3, 16, 16) and dm.class_names == ["cat", "dog"]
    assert len(dm.train_set) + len(dm.val_set) + len(dm.calibration_set) == 24
    with pytest.raises(OSRError, match=r"data.classes=\['dog', 'cat'\].*differ"):
        module(tmp_path, layout="images", classes=["dog", "cat"], mean=[0.5] * 3, std=[0.25] * 3)


def test_a_missing_folder_names_the_path_and_the_setting(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        module(tmp_path)
    message = str(e.value)
    assert f"{tmp_path / 'mine'}/{{train-images-idx3-ubyte" in message
    assert "data.data_dir=" in message and "with internet" not in message


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"layout": "csv"}, OSRError, "data.layout='csv'"),
        ({"classes": None}, OSRError, "data.classes is missing"),
        ({"classes": ["a", "b"]}, DatasetCorruptError, "each in 0..1"),
    ],
)
def test_a_config_that_cannot_be_read_is_refused(tmp_path, settings, error, match):
    idx_folder(tmp_path, torch.arange(30, dtype=torch.uint8) % 3)
    with pytest.raises(error, match=match):
        module(tmp_path, **settings).setup()
