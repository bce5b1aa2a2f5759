"""Fixtures: a tiny dataset mirror written by the tests, and the real Hydra config."""

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from osr.data import local
from osr.data.sources import CIFAR10Source
from osr.utils.config import CONFIG_DIR

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIRROR = Path(os.environ.get("OSR_DATA_DIR", SHARED_DATA))
needs_mirror = pytest.mark.skipif(
    not (MIRROR / "MNIST" / "raw").is_dir(),
    reason=f"offline dataset mirror not found at {MIRROR} (set OSR_DATA_DIR)",
)

TINY_TRAIN, TINY_TEST = 400, 120
TINY_CIFAR = 20  # training images per CIFAR-10 class
REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array in the IDX format MNIST ships in (uint8 data)."""
    local.write_idx(path, torch.from_numpy(array.astype(np.uint8)))


def digit_like(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images: a bright bar whose position encodes the label, plus noise."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        row = 3 + 2 * int(label)
        images[i, row : row + 3, 6:22] = 255
    return images.astype(np.uint8)


def clothing_like(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images unlike ``digit_like``: a large filled ellipse of mid-grey texture
    (its width grows with the label) on a dark noisy background."""
    n = len(labels)
    rows, cols = np.mgrid[0:28, 0:28]
    centre_row, centre_col = rng.uniform(11, 17, size=(2, n, 1, 1))
    half_height = rng.uniform(8, 12, size=(n, 1, 1))
    half_width = 5 + 0.6 * labels[:, None, None] + rng.uniform(0, 1, size=(n, 1, 1))
    inside = ((rows - centre_row) / half_height) ** 2 + ((cols - centre_col) / half_width) ** 2
    texture = rng.integers(90, 230, size=(n, 28, 28))
    return np.where(inside <= 1, texture, rng.integers(0, 40, size=(n, 28, 28))).astype(np.uint8)


def write_idx_dataset(
    root: Path, name: str, seed: int, draw: Callable[[np.ndarray, np.random.Generator], np.ndarray]
) -> None:
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", TINY_TRAIN), ("t10k", TINY_TEST)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx(root / name / "raw" / f"{prefix}-images-idx3-ubyte", draw(labels, rng))
        write_idx(root / name / "raw" / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))


CIFAR_CLASSES = CIFAR10Source.classes


def write_image_folder(folder: Path, classes: list[str], per_class: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
            torchvision.io.write_jpeg(image, str(folder / c / f"{i:04d}.jpg"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory in torchvision's layout with small MNIST, FashionMNIST and CIFAR10,
    each drawn differently so that a trained model can tell the OOD sets from the digits."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root, "MNIST", seed=0, draw=digit_like)
    write_idx_dataset(root, "FashionMNIST", seed=1, draw=clothing_like)
    write_image_folder(root / "CIFAR10" / "test", CIFAR_CLASSES, per_class=6, seed=2)
    write_image_folder(root / "CIFAR10" / "train", CIFAR_CLASSES, per_class=TINY_CIFAR, seed=3)
    return root


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Decoded image folders go to a temporary cache, for in-process runs and the ``python
    -m osr.*`` processes the tests start alike, never into the repository's."""
    path = tmp_path_factory.mktemp("cache")
    before = os.environ.get("OSR_CACHE_DIR")
    os.environ["OSR_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        del os.environ["OSR_CACHE_DIR"]
    else:
        os.environ["OSR_CACHE_DIR"] = before


# the OOD sets of the default config (data=mnist, ood=for/mnist); other ood configs name theirs
OOD_SETS = ("fashion_mnist", "cifar10")
TINY_OVERRIDES = [
    "data.val_size=100",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "data.download=false",
    *(f"ood.sets.{name}.download=false" for name in OOD_SETS),
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.rich_progress_bar=null",
    "report.tsne_points=60",
    # the default conformal rule at 1% needs at least 99 calibration images per part; the tiny
    # calibration splits (15 to 101 images, half the held-out ones) hold a 10% budget
    "calibration.alpha=0.1",
]


def tiny_overrides(*overrides: str) -> list[str]:
    """TINY_OVERRIDES for a run with ``overrides``: without the conformal budget when they
    name another threshold rule (``calibration=quantile``)."""
    other_rule = any(o.startswith("calibration=") for o in overrides)
    return [o for o in TINY_OVERRIDES if not (other_rule and o.startswith("calibration."))]


# one epoch of three training batches and one validation batch
TINY_TRAINING = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
]


# whether the running test carries @pytest.mark.slow (set by ``slow_marker_is_honest``)
RUNNING_SLOW_TEST = {"marked": True}


@pytest.fixture(autouse=True)
def slow_marker_is_honest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test without the slow marker fails as soon as it fits a model or starts osr.train,
    so ``pytest -m "not slow"`` stays a quick loop."""
    marked = request.node.get_closest_marker("slow") is not None
    monkeypatch.setitem(RUNNING_SLOW_TEST, "marked", marked)
    if not marked:

        def refuse(*args: object, **kwargs: object) -> None:
            pytest.fail(f"{request.node.nodeid} trains a model: mark it @pytest.mark.slow")

        monkeypatch.setattr(pl.Trainer, "fit", refuse)


# the run directories of entry points started by run_module, removed when the tests end
HYDRA_ENTRY_POINTS = ("osr.train", "osr.evaluate", "osr.calibrate", "osr.predict")
RUN_DIRS = tempfile.TemporaryDirectory(prefix="osr-test-runs-")


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the repository, as a user runs it. An entry point's
    run or sweep directory is a fresh temporary one unless ``args`` name it: never the
    repository's outputs/, where tests running side by side would share a second's folder."""
    if module == "osr.train" and not RUNNING_SLOW_TEST["marked"]:
        pytest.fail("this test starts osr.train: mark it @pytest.mark.slow")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    resumes = module == "osr.train" and any(arg.startswith("ckpt_path=") for arg in args)
    if module in HYDRA_ENTRY_POINTS and not resumes:  # a resumed run goes on in its own folder
        where = Path(tempfile.mkdtemp(dir=RUN_DIRS.name))
        for key in ("hydra.run.dir", "hydra.sweep.dir"):
            if not any(arg.startswith(f"{key}=") for arg in args):
                args = (*args, f"{key}={where / key.split('.')[1]}")
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def train_cfg(tiny_data: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real ``train`` config on the tiny data, writing into tmp_path."""

    def make(
        *overrides: str, config_name: str = "train", ood_sets: tuple[str, ...] | None = None
    ) -> DictConfig:
        """``ood_sets``: the OOD sets the composed config holds (e.g. () with ood=none); None
        for those of the known dataset (ood=for/<data>), found by composing."""
        tiny = [o for o in tiny_overrides(*overrides) if not o.startswith("ood.sets.")]
        base = [f"paths.data_dir={tiny_data}", *tiny]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            if ood_sets is None:
                held = compose(config_name=config_name, overrides=[*base, *overrides])
                ood_sets = tuple((held.get("ood") or {}).get("sets") or ())
            downloads = [f"ood.sets.{name}.download=false" for name in ood_sets]
            cfg = compose(config_name=config_name, overrides=[*base, *downloads, *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return make


@pytest.fixture
def evaluate_cfg(tiny_data: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real ``evaluate`` config for a checkpoint on the tiny data."""

    def make(ckpt: Path, *overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                config_name="evaluate",
                overrides=[
                    f"ckpt_path={ckpt}",
                    f"paths.data_dir={tiny_data}",
                    "report.tsne_points=60",
                    *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "evaluation")
        return cfg

    return make
