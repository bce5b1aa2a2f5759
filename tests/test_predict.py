import csv
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from osr.checkpoints import module_from_checkpoint, read_checkpoint
from osr.data import MNISTDataModule
from osr.train import train
from tests.conftest import TINY_TRAINING, run_module


def predict(*args: str) -> subprocess.CompletedProcess:
    return run_module("osr.predict", *args)


@pytest.fixture
def checkpoint(train_cfg, tmp_path) -> Path:
    train(train_cfg("model=mlae", *TINY_TRAINING))
    return tmp_path / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture
def images(tiny_data, tmp_path) -> tuple[Path, torch.Tensor]:
    """A folder of test digits as PNG, odd sizes and channel counts, and junk files."""
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    dm = MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=100, download=False)
    dm.setup()
    digits = dm.test_set.tensors[0][:5]
    for i, digit in enumerate(digits):
        torchvision.io.write_png(digit, str(folder / f"digit{i}.png"))
    big_rgb = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
    torchvision.io.write_jpeg(big_rgb, str(folder / "nested" / "photo.JPG"))
    rgba = torch.randint(0, 255, (20, 20, 4), dtype=torch.uint8).numpy()
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("not an image")
    return folder, digits


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_predicts_every_readable_image_and_skips_the_rest(checkpoint, images, tmp_path):
    folder, digits = images
    done = predict(f"ckpt_path={checkpoint}", f"inputs={folder}", f"hydra.run.dir={tmp_path / 'p'}")
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "predicted 7 images" in log and "1 unreadable files skipped" in log
    assert "broken.png" in log
    rows = read_rows(tmp_path / "p" / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == [
        "digit0.png",
        "digit1.png",
        "digit2.png",
        "digit3.png",
        "digit4.png",
        "photo.JPG",
        "rgba.png",
    ]
    module = module_from_checkpoint(read_checkpoint(checkpoint)).eval()
    expected = module.predict_open(MNISTDataModule(".", 0.13, 0.31).transform(digits))
    names = [*module.hparams.class_names, "unknown"]
    assert [r["prediction"] for r in rows[:5]] == [names[i] for i in expected.tolist()]
    thresholds = module.threshold_dict()
    for score in ("recon_l2", "binary_diff", "msp", "max_logit", "energy"):
        assert float(rows[0][f"{score}_threshold"]) == pytest.approx(thresholds[score])
        float(rows[0][score])


def test_single_file_glob_and_output_path(checkpoint, images, tmp_path):
    folder, _ = images
    out = tmp_path / "one.csv"
    done = predict(
        f"ckpt_path={checkpoint}",
        f"inputs={folder / 'digit0.png'}",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'p1'}",
    )
    assert done.returncode == 0 and len(read_rows(out)) == 1
    done = predict(
        f"ckpt_path={checkpoint}",
        f"inputs='{folder}/digit[12].png'",
        f"hydra.run.dir={tmp_path / 'p2'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_rows(tmp_path / "p2" / "predictions.csv")) == 2


def test_no_images_is_a_clear_error(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    done = predict(
        f"ckpt_path={checkpoint}", f"inputs={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert done.returncode == 2
    assert "no PNG or JPEG images found" in done.stderr
