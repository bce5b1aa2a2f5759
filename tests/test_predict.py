import csv
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from osr.data import MNISTDataModule
from osr.predict import find_images, load_images
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
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


@pytest.fixture
def mixed_files(tmp_path) -> Path:
    """Two real images among files that torchvision would decode (GIF, WebP, a GIF named
    .png) or not (text, a broken PNG)."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    pixels = torch.randint(0, 255, (3, 20, 20), dtype=torch.uint8)
    torchvision.io.write_png(pixels, str(folder / "a.png"))
    torchvision.io.write_jpeg(pixels, str(folder / "sub" / "b.jpeg"))
    picture = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    picture.save(folder / "c.gif")
    picture.save(folder / "d.webp")
    picture.save(folder / "gif_named.png", format="GIF")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return folder


SKIPPED = {"c.gif", "d.webp", "gif_named.png", "notes.txt", "broken.png"}


@pytest.mark.parametrize("pattern", ["{folder}", "{folder}/**/*"], ids=["folder", "glob"])
def test_only_png_and_jpeg_are_read_and_every_other_file_is_counted(mixed_files, pattern):
    paths = find_images(pattern.format(folder=mixed_files))
    kept, images, skipped = load_images(paths, (1, 28, 28))
    assert [p.name for p in kept] == ["a.png", "b.jpeg"]
    assert images.shape == (2, 1, 28, 28)
    assert {s.path.name for s in skipped} == SKIPPED
    reasons = {s.path.name: s.reason for s in skipped}
    for name in ("c.gif", "d.webp", "gif_named.png", "notes.txt"):
        assert reasons[name] == "not a PNG or JPEG file", name
    assert reasons["broken.png"].startswith("not a readable PNG/JPEG image (")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predicts_every_readable_image_and_skips_the_rest(checkpoint, images, tmp_path):
    folder, digits = images
    done = predict(f"ckpt_path={checkpoint}", f"inputs={folder}", f"hydra.run.dir={tmp_path / 'p'}")
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "predicted 7 images" in log and "2 files skipped" in log
    assert "skipped " + str(folder / "broken.png") in log
    assert "skipped " + str(folder / "notes.txt") in log
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_no_images_is_a_clear_error(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    done = predict(
        f"ckpt_path={checkpoint}", f"inputs={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert done.returncode == 2
    assert "no PNG or JPEG images found" in done.stderr
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    done = predict(
        f"ckpt_path={checkpoint}", f"inputs={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'q'}"
    )
    assert done.returncode == 2
    assert "none of its 1 files is a readable PNG or JPEG image" in done.stderr
    assert not (tmp_path / "q" / "predictions.csv").exists()


@pytest.mark.slow
def test_p_values_and_the_batch_decision_by_benjamini_hochberg(checkpoint, images, tmp_path):
    from osr.scoring.p_values import benjamini_hochberg, p_values

    folder, digits = images
    done = predict(
        f"ckpt_path={checkpoint}", f"inputs={folder}", "fdr=0.3", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(tmp_path / "p" / "predictions.csv")
    module = module_from_checkpoint(read_checkpoint(checkpoint)).eval()
    assert module.conformal_reference["voting"] == list(module.hparams.voting_scores)
    scores = {s: torch.tensor([float(r[s]) for r in rows]) for s in module.score_names}
    p = p_values(module.conformal_reference, scores)
    assert [float(r["p_value"]) for r in rows] == pytest.approx(p.tolist(), rel=1e-6)
    rejected = benjamini_hochberg(p, 0.3).tolist()
    assert [r["fdr_prediction"] == "unknown" for r in rows] == rejected
    # the noise images are the unknowns BH finds; a kept image gets its most likely class
    assert rejected[5] and rejected[6]
    kept = [r for r, out in zip(rows, rejected, strict=True) if not out]
    assert all(r["fdr_prediction"] in module.hparams.class_names for r in kept)
    bad = predict(f"ckpt_path={checkpoint}", f"inputs={folder}", "fdr=1.5")
    assert bad.returncode == 2 and "fdr=1.5 must lie in (0, 1)" in bad.stderr
