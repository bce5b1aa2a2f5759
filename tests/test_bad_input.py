"""Bad input gets one clear message and a non-zero exit, never a raw traceback."""

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision

from osr.data import CIFAR10DataModule, MNISTDataModule
from osr.train import train
from osr.utils.checkpoints import read_checkpoint
from osr.utils.errors import CheckpointError, DatasetCorruptError, DatasetNotFoundError
from tests.conftest import (
    CIFAR_CLASSES,
    TINY_OVERRIDES,
    TINY_TRAINING,
    run_module,
    write_image_folder,
)

CIFAR_STATS = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


def first_error_line(done: subprocess.CompletedProcess) -> str:
    return next(line for line in done.stderr.splitlines() if line.startswith("error:"))


@pytest.fixture
def mnist_copy(tiny_data, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "MNIST", root / "MNIST")
    return root


def setup_mnist(root: Path) -> None:
    MNISTDataModule(str(root), 0.13, 0.31, val_size=100, download=False).setup()


def test_missing_idx_file(mnist_copy):
    (mnist_copy / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="MNIST not found in .*files are missing"):
        setup_mnist(mnist_copy)


def test_truncated_idx_file(mnist_copy):
    images = mnist_copy / "MNIST/raw/train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DatasetCorruptError, match="could not be read.*Delete them to download"):
        setup_mnist(mnist_copy)


def test_wrong_idx_header(mnist_copy):
    labels = mnist_copy / "MNIST/raw/train-labels-idx1-ubyte"
    data = labels.read_bytes()
    labels.write_bytes(struct.pack(">BBBB", 0, 0, 0x0D, 1) + data[4:])  # float64 type code
    with pytest.raises(DatasetCorruptError):
        setup_mnist(mnist_copy)


def test_empty_image_folder(tmp_path):
    for c in CIFAR_CLASSES:
        (tmp_path / "CIFAR10/test" / c).mkdir(parents=True)
    dm = CIFAR10DataModule(str(tmp_path), **CIFAR_STATS, unknown_label=10, download=False)
    with pytest.raises(DatasetCorruptError, match="not laid out as <class>/<image>"):
        dm.setup()


def test_image_folder_without_class_folders(tmp_path):
    folder = tmp_path / "CIFAR10/test"
    folder.mkdir(parents=True)
    torchvision.io.write_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8), str(folder / "a.jpg"))
    dm = CIFAR10DataModule(str(tmp_path), **CIFAR_STATS, unknown_label=10, download=False)
    with pytest.raises(DatasetCorruptError, match="not laid out as <class>/<image>"):
        dm.setup()


def test_image_folder_with_other_classes(tmp_path):
    write_image_folder(tmp_path / "CIFAR10/test", ["apples", "pears"], per_class=1, seed=0)
    dm = CIFAR10DataModule(str(tmp_path), **CIFAR_STATS, unknown_label=10, download=False)
    with pytest.raises(DatasetCorruptError, match="has class folders"):
        dm.setup()


def test_corrupt_image_in_folder(tmp_path):
    write_image_folder(tmp_path / "CIFAR10/test", CIFAR_CLASSES, per_class=1, seed=0)
    (tmp_path / "CIFAR10/test/cat/0000.jpg").write_bytes(b"not a jpeg")
    dm = CIFAR10DataModule(str(tmp_path), **CIFAR_STATS, unknown_label=10, download=False)
    with pytest.raises(DatasetCorruptError, match="0000.jpg could not be decoded"):
        dm.setup()


@pytest.fixture
def trained(train_cfg, tmp_path) -> Path:
    train(train_cfg("model=mlae", *TINY_TRAINING))
    return tmp_path / "run" / "checkpoints"


@pytest.mark.slow
def test_truncated_and_foreign_checkpoints_are_refused(trained, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((trained / "best.ckpt").read_bytes()[:20000])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        read_checkpoint(truncated)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        read_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused.*nothing in it was run"):
        read_checkpoint(evil)
    assert not marker.exists()
    done = run_module("osr.evaluate", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 2 and "refused" in first_error_line(done)
    assert not marker.exists()


@pytest.mark.slow
def test_resuming_with_the_other_model_type(trained, tiny_data, tmp_path):
    done = run_module(
        "osr.train",
        "model=baseline",
        f"ckpt_path={trained / 'last.ckpt'}",
        f"paths.data_dir={tiny_data}",
        f"hydra.run.dir={tmp_path / 'other'}",
        *[o for o in TINY_OVERRIDES if not o.startswith("report.")],
        *TINY_TRAINING,
    )
    assert done.returncode == 2
    line = first_error_line(done)
    assert "AutoencoderClassifier" in line and "model=baseline or model=mlae" in line
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_uncalibrated_checkpoint_cannot_be_evaluated_or_used_to_predict(
    train_cfg, tmp_path, tiny_data
):
    train(
        train_cfg(
            "model=baseline",
            "callbacks.threshold_calibration=null",
            "evaluate=false",
            *TINY_TRAINING,
        )
    )
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    done = run_module(
        "osr.evaluate",
        f"ckpt_path={ckpt}",
        f"paths.data_dir={tiny_data}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert done.returncode == 2 and "calibrate it first" in first_error_line(done)
    image = tmp_path / "x.png"
    torchvision.io.write_png(torch.zeros(1, 28, 28, dtype=torch.uint8), str(image))
    done = run_module(
        "osr.predict", f"ckpt_path={ckpt}", f"inputs={image}", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert done.returncode == 2 and "calibrate it first" in first_error_line(done)
    assert not (tmp_path / "p" / "predictions.csv").exists()


@pytest.mark.slow
def test_unknown_config_group_value_lists_the_options():
    done = run_module("osr.train", "model=resnet")
    assert done.returncode != 0
    assert "Could not find 'model/resnet'" in done.stderr and "baseline" in done.stderr


@pytest.mark.slow
def test_loss_blowing_up_stops_with_the_step(train_cfg):
    from osr.utils.errors import OSRError

    cfg = train_cfg("model=baseline", "model.optimizer.lr=1e12", "trainer.max_epochs=1")
    words = r"training loss became (nan|inf) in epoch 0, steps \d+-\d+ \(checked at"
    with pytest.raises(OSRError, match=words):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.voting_scores=[recon_l2]", "model.voting_scores=['recon_l2']: no detector named"),
        ("data.known_classes=[3,3]", "data.known_classes=[3, 3] for mnist must be"),
        ("calibration=quantile calibration.q=1.5", "calibration.q=1.5 must lie in (0, 1]"),
        ("calibration.delta=1.5", "calibration.delta=1.5 must lie in (0, 1)"),
        (
            "calibration.delta=0.05 data.val_size=500",
            "data.calibration_size=250: calibration.alpha=0.01 and calibration.delta=0.05 with 3 "
            "voting detector(s) needs at least 597 calibration images. Set "
            "data.calibration_size=597 or more (and data.val_size, now 500, above it)",
        ),
    ],
)
def test_bad_config_values_inside_constructors(tiny_data, tmp_path, override, words):
    done = run_module(
        "osr.train",
        "model=baseline",
        *override.split(),
        f"paths.data_dir={tiny_data}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "data.download=false",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert words in first_error_line(done)


@pytest.mark.slow
def test_nonfinite_loss_is_caught_before_a_checkpoint_saves_broken_weights(train_cfg, tmp_path):
    from osr.utils.errors import OSRError

    cfg = train_cfg(
        "model=baseline",
        "model.optimizer.lr=1e12",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=4",
        "callbacks.last_checkpoint.every_n_train_steps=4",
    )
    with pytest.raises(OSRError, match=r"in epoch 0, steps 1-4 \(checked at step 4, every"):
        train(cfg)
    for ckpt in (tmp_path / "run").rglob("*.ckpt"):
        weights = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "when"),
    [
        ((), "checked at the end of epoch 0"),  # before the validation that saves last.ckpt
        (("+trainer.val_check_interval=2",), "checked before validating at step 2"),
    ],
)
def test_nonfinite_loss_between_checks_is_caught_before_validation_saves(
    train_cfg, tmp_path, overrides, when
):
    from osr.utils.errors import OSRError

    cfg = train_cfg(
        "model=baseline",
        "model.optimizer.lr=1e30",  # the second step's loss is no longer finite
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=50",  # more steps than the epoch has
        *overrides,
    )
    with pytest.raises(OSRError, match=rf"in epoch 0, steps 1-\d+ \({when}\)"):
        train(cfg)
    for ckpt in (tmp_path / "run").rglob("*.ckpt"):
        weights = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
