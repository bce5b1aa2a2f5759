"""Read datasets through torchvision once and hand them back as in-memory uint8 tensors at
their own shape (1x28x28 digits and clothes, 3x32x32 CIFAR-10); the DataModule brings them to
the known set's shape.

Layout under the data directory (torchvision's own):
  MNIST/raw/*-ubyte, FashionMNIST/raw/*-ubyte,
  CIFAR10/cifar-10-batches-py/ (torchvision's CIFAR10) or CIFAR10/{train,test}/<class>/*.jpg
  (decoded once into ``cache_dir``).
"""

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from osr.data.image_folder import cached_image_folder
from osr.utils.errors import DatasetCorruptError, DatasetNotFoundError

Images = tuple[Tensor, Tensor]  # uint8 (N,C,H,W), int64 labels (N,)


def _missing(name: str, where: Path, expected: str, reason: str) -> DatasetNotFoundError:
    """What is missing and where; the DataModule adds how to point osr at it."""
    return DatasetNotFoundError(f"{name} not found in {where} (expected {expected}); {reason}.")


def _download(name: str, folder: Path, expected: str, fetch: Callable[[], object]) -> None:
    """Run torchvision's download; on failure remove what it left and raise a clear error."""
    existed = folder.exists()
    try:
        fetch()
    except Exception as e:  # urllib, HTTP and checksum errors all mean: not available
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        reason = " ".join(str(e).split())
        raise _missing(name, folder.parent, expected, f"download failed ({reason})") from None


class IDXSource:
    """MNIST-format datasets (MNIST, FashionMNIST) read from ``<root>/<Name>/raw``."""

    def __init__(self, dataset_cls: type[torchvision.datasets.MNIST]) -> None:
        self.dataset_cls = dataset_cls
        self.name = dataset_cls.__name__
        self.classes: list[str] = list(dataset_cls.classes)
        self.shape = (1, 28)  # channels, side

    def expected(self, root: Path) -> str:
        files = ", ".join(Path(url).stem for url, _ in self.dataset_cls.resources)
        return f"{root / self.name / 'raw'}/{{{files}}}"

    def available(self, root: Path) -> bool:
        raw = root / self.name / "raw"
        return all((raw / Path(url).stem).is_file() for url, _ in self.dataset_cls.resources)

    def download(self, root: Path) -> None:
        _download(
            self.name,
            root / self.name,
            self.expected(root),
            lambda: self.dataset_cls(str(root), train=True, download=True),
        )

    def load(self, root: Path, train: bool, cache_dir: Path | None = None) -> Images:
        if not self.available(root):
            raise _missing(self.name, root, self.expected(root), "the files are missing")
        try:
            ds = self.dataset_cls(str(root), train=train, download=False)
            images, labels = ds.data, ds.targets
        except Exception as e:
            raise DatasetCorruptError(
                f"{self.name} files in {root / self.name / 'raw'} could not be read ({e}). "
                f"Delete them to download again, or restore them from a good copy."
            ) from None
        if images.dtype != torch.uint8 or images.ndim != 3 or len(images) != len(labels):
            raise DatasetCorruptError(
                f"{self.name} files in {root / self.name / 'raw'} hold {tuple(images.shape)} "
                f"{images.dtype} images and {len(labels)} labels, not (N,28,28) uint8 with N "
                "labels. Delete them to download again, or restore them from a good copy."
            )
        return images.unsqueeze(1), labels.long()


class CIFAR10Source:
    """CIFAR-10 from torchvision's pickles, or from an image folder ``CIFAR10/<split>/<class>/``."""

    name = "CIFAR10"
    shape = (3, 32)  # channels, side
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]

    def pickles_available(self, root: Path) -> bool:
        return (root / self.name / "cifar-10-batches-py").is_dir()

    def folder(self, root: Path, train: bool) -> Path:
        return root / self.name / ("train" if train else "test")

    def expected(self, root: Path, train: bool) -> str:
        return (
            f"{root / self.name / 'cifar-10-batches-py'} or "
            f"{self.folder(root, train)}/<class>/<image>"
        )

    def available(self, root: Path) -> bool:
        return self.pickles_available(root) or self.folder(root, train=False).is_dir()

    def download(self, root: Path) -> None:
        _download(
            self.name,
            root / self.name,
            self.expected(root, False),
            lambda: torchvision.datasets.CIFAR10(str(root / self.name), train=False, download=True),
        )

    def load(self, root: Path, train: bool, cache_dir: Path | None = None) -> Images:
        if self.pickles_available(root):
            try:
                ds = torchvision.datasets.CIFAR10(
                    str(root / self.name), train=train, download=False
                )
            except Exception as e:
                raise DatasetCorruptError(
                    f"CIFAR10 pickles in {root / self.name} could not be read ({e}). "
                    "Delete cifar-10-batches-py to download again."
                ) from None
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            return images, torch.as_tensor(ds.targets, dtype=torch.long)
        folder = self.folder(root, train)
        if not folder.is_dir():
            raise _missing(self.name, root, self.expected(root, train), "neither is there")
        images, labels, classes = cached_image_folder(folder, self.name, cache_dir)
        if classes != self.classes:
            raise DatasetCorruptError(
                f"CIFAR10 image folder {folder} has class folders {classes}, expected "
                f"{self.classes}. Lay it out as <class>/<image> with CIFAR-10's ten classes."
            )
        return images, labels


SOURCES = {
    "MNIST": IDXSource(torchvision.datasets.MNIST),
    "FashionMNIST": IDXSource(torchvision.datasets.FashionMNIST),
    "CIFAR10": CIFAR10Source(),
}
