"""Image folders (``<class>/<image>``) decoded once into a uint8 tensor file in a cache.

Decoding CIFAR-10's 60,000 JPEGs takes about 15 s on a small CPU, every run; the decoded
tensors load in well under a second. A cache file is keyed by a digest of the folder's
listing (every file's relative path, size and modification time), so a folder whose files
are added, removed or rewritten is decoded again. The cache never lives inside the data
directory, which may be read-only and shared.
"""

import hashlib
import os
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from osr.utils.errors import DatasetCorruptError, OSRError
from osr.utils.io import atomic_write

# tensors and names a decoded folder is kept as (torch.save, read back with weights_only)
CACHE_KEYS = ("images", "labels", "classes")


def _listing(folder: Path) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Class folder names, and (class/file, size, mtime_ns) of every file, sorted."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    files = []
    for name in classes:
        for entry in sorted(os.scandir(folder / name), key=lambda e: e.name):
            if entry.is_file():
                stat = entry.stat()
                files.append((f"{name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
    return classes, files


def folder_digest(folder: Path) -> str:
    """A digest of the folder's listing: it changes when any file is added, removed or
    rewritten."""
    digest = hashlib.blake2b(digest_size=16)
    for path, size, mtime in _listing(folder)[1]:
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def decode_image_folder(folder: Path, name: str) -> tuple[Tensor, Tensor, list[str]]:
    """Every image of an ImageFolder layout as uint8 RGB (N,3,H,W), labels, class names."""
    try:
        ds = torchvision.datasets.ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetCorruptError(
            f"{name} image folder {folder} is not laid out as <class>/<image> ({e}). "
            "Put each class's images in a sub-folder named after the class."
        ) from None
    images = []
    for path, _ in ds.samples:
        try:
            image = torchvision.io.decode_image(
                torchvision.io.read_file(path), mode=torchvision.io.ImageReadMode.RGB
            )
        except RuntimeError as e:
            raise DatasetCorruptError(
                f"{name} image {path} could not be decoded ({e}). Remove or replace it."
            ) from None
        images.append(image)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise DatasetCorruptError(
            f"{name} image folder {folder} holds images of {len(shapes)} sizes "
            f"({sorted(shapes)[:3]}...); every image of a dataset must have one size."
        )
    return torch.stack(images), torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes)


def check_cache_dir(cache_dir: Path, data_dir: Path) -> None:
    """The cache must not be written inside the data directory (read-only, shared)."""
    cache, data = cache_dir.expanduser().resolve(), data_dir.expanduser().resolve()
    if cache == data or data in cache.parents:
        raise OSRError(
            f"paths.cache_dir={cache_dir} lies inside the data directory {data_dir}, which osr "
            "never writes to. Point it elsewhere, e.g. paths.cache_dir=.cache or "
            "export OSR_CACHE_DIR=/tmp/osr-cache."
        )


def cached_image_folder(
    folder: Path, name: str, cache_dir: Path | None
) -> tuple[Tensor, Tensor, list[str]]:
    """``decode_image_folder``, through a cache file under ``cache_dir`` (None: no cache).
    The file's name says which dataset, split and folder it holds and the listing's digest."""
    if cache_dir is None:
        return decode_image_folder(folder, name)
    where = hashlib.blake2b(str(folder.resolve()).encode(), digest_size=4).hexdigest()
    prefix = f"{name}-{folder.name}-{where}-"  # one file per folder: older digests go
    path = Path(cache_dir).expanduser() / f"{prefix}{folder_digest(folder)}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return tuple(cached[key] for key in CACHE_KEYS)  # type: ignore[return-value]
        except Exception:  # a damaged cache file is only a cache: decode again
            path.unlink(missing_ok=True)
    images, labels, classes = decode_image_folder(folder, name)
    stored = dict(zip(CACHE_KEYS, (images, labels, classes), strict=True))
    atomic_write(path, lambda f: torch.save(stored, f))
    for stale in path.parent.glob(f"{prefix}*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return images, labels, classes
