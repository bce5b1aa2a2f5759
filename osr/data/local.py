"""Datasets of your own from a config file alone: a folder ``<data_dir>/<name>/`` holding
IDX files (MNIST's format) or an image folder, read into the same in-memory uint8 tensors as
the built-in datasets, so either serves as the known dataset or as an OOD set.

  layout: idx     <data_dir>/<name>/{train,t10k}-images-idx3-ubyte (N,H,W uint8) and
                  {train,t10k}-labels-idx1-ubyte (N labels); the classes are named in the
                  config (``classes``), label i being ``classes[i]``
  layout: images  <data_dir>/<name>/{train,test}/<class>/<image> (any format torchvision
                  decodes, one size), read as RGB, decoded once into ``cache_dir``; the
                  classes are the sub-folders' names, sorted

There is nothing to download: a missing file is an error naming the path it was looked for.
"""

import struct
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file

from osr.data.datamodules import ImageDataModule
from osr.data.image_folder import cached_image_folder
from osr.data.sources import Images
from osr.utils.config import plain
from osr.utils.errors import DatasetCorruptError, DatasetNotFoundError, OSRError
from osr.utils.io import atomic_write

IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_FOLDERS = {True: "train", False: "test"}


def write_idx(path: str | Path, values: Tensor) -> None:
    """Write uint8 ``values`` (N,H,W images or N labels) as an IDX file, MNIST's format."""
    values = values.to("cpu", torch.uint8).contiguous()
    header = struct.pack(">4B", 0, 0, 0x08, values.ndim)
    header += struct.pack(f">{values.ndim}I", *values.shape)
    atomic_write(path, lambda f: f.write(header + values.numpy().tobytes()))


class IDXFolderSource:
    """IDX files in ``<root>/<name>/``."""

    def __init__(self, name: str, classes: Sequence[str] | None) -> None:
        if not classes:
            raise OSRError(
                f"data.classes is missing for the IDX dataset {name}: name its classes in "
                "label order in conf/data/<name>.yaml, e.g. classes: [zero, one, two]."
            )
        self.name, self.classes = name, [str(c) for c in classes]

    def expected(self, root: Path) -> str:
        files = ", ".join(f for pair in IDX_FILES.values() for f in pair)
        return f"{root / self.name}/{{{files}}}"

    def available(self, root: Path) -> bool:
        return all((root / self.name / f).is_file() for pair in IDX_FILES.values() for f in pair)

    def shape(self, root: Path) -> tuple[int, int]:
        """(channels, side) from the test images' IDX header."""
        path = root / self.name / IDX_FILES[False][0]
        if not path.is_file():
            raise self.missing(root)
        with path.open("rb") as f:
            magic, _, height, width = struct.unpack(">4I", f.read(16))
        if magic != 0x803 or height != width:
            raise DatasetCorruptError(
                f"{path} is not an IDX file of square uint8 images (magic {magic:#x}, "
                f"{height}x{width}); write it as MNIST's are: (N,H,W) uint8, H equal to W."
            )
        return 1, height

    def missing(self, root: Path) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.name} not found in {root} (expected {self.expected(root)}); "
            "the files are missing (osr cannot download a dataset of your own)."
        )

    def load(self, root: Path, train: bool, cache_dir: Path | None = None) -> Images:
        if not self.available(root):
            raise self.missing(root)
        paths = [root / self.name / f for f in IDX_FILES[train]]
        try:
            images, labels = read_image_file(str(paths[0])), read_label_file(str(paths[1]))
        except Exception as e:
            raise DatasetCorruptError(
                f"{self.name} IDX files {paths[0]} and {paths[1]} could not be read ({e}); "
                "write them as MNIST's are: (N,H,W) uint8 images and N uint8 labels."
            ) from None
        labels = labels.long()
        if len(images) != len(labels) or labels.min() < 0 or labels.max() >= len(self.classes):
            raise DatasetCorruptError(
                f"{self.name}: {paths[0]} holds {len(images)} images and {paths[1]} "
                f"{len(labels)} labels in {labels.min()}..{labels.max()}; there must be one "
                f"label per image, each in 0..{len(self.classes) - 1} (data.classes)."
            )
        return images.unsqueeze(1), labels


class ImageFolderSource:
    """Images in ``<root>/<name>/{train,test}/<class>/``."""

    def __init__(self, name: str, classes: Sequence[str] | None, root: Path) -> None:
        self.name = name
        train = root / name / SPLIT_FOLDERS[True]
        if not train.is_dir():  # an OOD set may have a test split only
            train = root / name / SPLIT_FOLDERS[False]
        listed = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        if classes and listed and [str(c) for c in classes] != listed:
            raise OSRError(
                f"data.classes={list(classes)} for {name} differ from the class folders of "
                f"{train}: {listed}. Drop data.classes or rename the folders."
            )
        self.classes = [str(c) for c in classes] if classes else listed

    def expected(self, root: Path) -> str:
        return f"{root / self.name}/{{train,test}}/<class>/<image>"

    def available(self, root: Path) -> bool:
        return (root / self.name / SPLIT_FOLDERS[False]).is_dir()

    def missing(self, root: Path) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.name} not found in {root} (expected {self.expected(root)}); "
            "the folders are missing (osr cannot download a dataset of your own)."
        )

    def shape(self, root: Path) -> tuple[int, int]:
        """(3, side) from the first test image (decoded as RGB)."""
        test = root / self.name / SPLIT_FOLDERS[False]
        first = next((p for p in sorted(test.glob("*/*")) if p.is_file()), None)
        if first is None:
            raise self.missing(root)
        image = torchvision.io.decode_image(
            torchvision.io.read_file(str(first)), mode=torchvision.io.ImageReadMode.RGB
        )
        if image.shape[1] != image.shape[2]:
            raise DatasetCorruptError(
                f"{first} is {image.shape[2]}x{image.shape[1]}: {self.name}'s images must be "
                "square (crop or pad them to one side)."
            )
        return 3, image.shape[1]

    def load(self, root: Path, train: bool, cache_dir: Path | None = None) -> Images:
        folder = root / self.name / SPLIT_FOLDERS[train]
        if not folder.is_dir():
            raise self.missing(root)
        images, labels, classes = cached_image_folder(folder, self.name, cache_dir)
        if classes != self.classes:
            raise DatasetCorruptError(
                f"{folder} has class folders {classes}, the training split {self.classes}; "
                "give both splits the same class folders."
            )
        return images, labels


class FolderDataModule(ImageDataModule):
    """A dataset of your own (see the module's docstring), named ``name`` in figures and as
    an OOD set; ``flippable: false`` where a mirrored image is not of its class (digits)."""

    def __init__(
        self,
        name: str,
        layout: str,
        data_dir: str,
        classes: Sequence[str] | None = None,
        flippable: bool = True,
        **kwargs,
    ) -> None:
        # saved with the hyperparameters (this frame's too): plain data only
        classes, kwargs = plain(classes), {key: plain(value) for key, value in kwargs.items()}
        root = Path(data_dir).expanduser()
        if layout == "idx":
            self._folder_source = IDXFolderSource(name, classes)
        elif layout == "images":
            self._folder_source = ImageFolderSource(name, classes, root)
        else:
            raise OSRError(
                f"data.layout={layout!r} for {name}: use idx (MNIST's IDX files) or images "
                "(<class>/<image> folders)."
            )
        self.name, self.flippable = name, flippable
        self.source_name = str((root / name).resolve())
        super().__init__(data_dir=data_dir, **kwargs)

    def make_source(self) -> IDXFolderSource | ImageFolderSource:
        return self._folder_source

    def native_shape(self) -> tuple[int, int]:
        return self._folder_source.shape(self.data_dir)
