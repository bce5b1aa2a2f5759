"""LightningDataModules holding whole datasets in memory as uint8 tensors.

Each one is usable as the in-distribution dataset (train/val/test) or, given
``unknown_label``, as an out-of-distribution set whose test images are all UNKNOWN.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from osr.data.augment import NaturalImageAugment
from osr.data.image_folder import check_cache_dir
from osr.data.labels import UNKNOWN_NAME
from osr.data.sampling import ResumableDataLoader, ShardedBatchSampler, TensorBatchLoader
from osr.data.sources import SOURCES
from osr.data.transforms import BatchTransform, resize
from osr.utils.config import plain
from osr.utils.errors import DatasetNotFoundError, OSRError
from osr.utils.phases import phase


class ImageDataModule(pl.LightningDataModule):
    """One torchvision dataset, held in memory, batched by index and transformed on device.

    Args:
        data_dir: where the dataset lies (or is downloaded to) in torchvision's layout.
        mean, std: normalization statistics (1 value, or 3 for RGB normalized before grayscale).
        val_size: images of the official training set held out from training.
        calibration_size: how many of those calibrate alone (thresholds, conformal p-values):
            never trained on, never used to select the checkpoint, stop early or drive a
            schedule, so that the conformal guarantee's exchangeability holds; the others form
            the validation split, which does those. None: half of ``val_size``; 0: none (the
            thresholds are fitted on the validation split, as osr did before 2026-12-08).
        seed: draws the train/val split, the shuffling order and the ``test_limit`` subset.
        known_classes: class indices kept as known, relabelled 0..K-1 in this order; the
            others' test images become the OOD set ``<name>_unknown``. None keeps all.
        unknown_label: set to use the module as an OOD set: only its test split is loaded and
            every label becomes this value.
        test_limit: at most this many test images (a random subset drawn with ``seed``), None
            for all.
        fit_limit: fit the detectors (and the objective's after-training state) on the first
            this many images of the (randomly ordered) training split; None for all of them.
        download: try torchvision's download when the files are missing.
        channels, image_size: the shape images are brought to (None: the dataset's own,
            1x28x28 digits, 3x32x32 CIFAR-10); an OOD set gets the known set's.
        cache_dir: where image folders are decoded once (None: decode every time); never
            inside ``data_dir``.
        blur_kernel_size, blur_sigma, translate, rotate, crop_padding, flip, cutout,
            randaugment_ops, randaugment_magnitude: the training augmentation (see
            ``BatchTransform`` and ``NaturalImageAugment``), drawn per image in
            ``on_after_batch_transfer`` on the batch's device. Datasets whose images change
            meaning when mirrored (digits) refuse ``flip``.
        on_device: keep the uint8 tensors on the trainer's accelerator (moved once) and draw
            the index batches there: true, false, or auto (when they take under a quarter of
            the accelerator's free memory). On the CPU the data is in memory either way.
        device_eval_batch_size: evaluation and calibration batch size when the data lives on
            an accelerator (large batches keep a GPU busy).
        drop_last: drop each training epoch's short last batch (one batch shape, as
            ``model.compile=reduce-overhead`` needs).
    """

    source_name: str = ""
    name: str = ""
    # whether a mirrored image is still an image of its class (a mirrored digit is not)
    flippable: bool = True

    def __init__(
        self,
        data_dir: str,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        batch_size: int = 64,
        eval_batch_size: int = 250,
        num_workers: int = 0,
        val_size: int = 10_000,
        calibration_size: int | None = None,
        seed: int = 0,
        known_classes: Sequence[int] | None = None,
        unknown_label: int | None = None,
        test_limit: int | None = None,
        fit_limit: int | None = None,
        download: bool = True,
        blur_kernel_size: int = 3,
        blur_sigma: Sequence[float] = (0.1, 1.0),
        translate: float = 0.0,
        rotate: float = 0.0,
        on_device: bool | str = "auto",
        device_eval_batch_size: int = 4096,
        drop_last: bool = False,
        channels: int | None = None,
        image_size: int | None = None,
        cache_dir: str | None = None,
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        randaugment_ops: int = 0,
        randaugment_magnitude: float = 9,
    ) -> None:
        super().__init__()
        if on_device not in ("auto", True, False):
            raise OSRError(
                f"data.on_device={on_device!r}: use true, false or auto, e.g. data.on_device=auto"
            )
        if calibration_size is not None and not 0 <= calibration_size < val_size:
            raise OSRError(
                f"data.calibration_size={calibration_size} must be at least 0 and below "
                f"data.val_size={val_size} (the rest selects the checkpoint), e.g. "
                f"data.calibration_size={val_size // 2}, or null for half of data.val_size."
            )
        if flip and not self.flippable:
            raise OSRError(
                f"data.flip=true for {self.name}: a mirrored {self.name} image is not an image "
                "of its class, so it is never flipped. Set data.flip=false."
            )
        mean, std, blur_sigma = plain(mean), plain(std), plain(blur_sigma)
        known_classes = plain(known_classes)
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(data_dir).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        if self.cache_dir is not None:
            check_cache_dir(self.cache_dir, self.data_dir)
        self.source = self.make_source()
        if channels is None or image_size is None:  # an OOD set takes the known set's
            try:
                native_channels, native_size = self.native_shape()
            except DatasetNotFoundError as e:
                raise self._how_to_point(e) from None
        self.input_shape = (
            channels or native_channels,
            image_size or native_size,
            image_size or native_size,
        )
        natural = NaturalImageAugment(
            crop_padding, flip, cutout, randaugment_ops, randaugment_magnitude
        )
        self.transform = BatchTransform(
            mean,
            std,
            blur_kernel_size,
            blur_sigma,
            translate=translate,
            rotate=rotate,
            channels=self.input_shape[0],
            natural=natural,
        )
        self.known_classes = list(known_classes) if known_classes is not None else None
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.calibration_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.fit_set: TensorDataset | None = None
        self.unknown_sets: dict[str, TensorDataset] = {}
        if not self.is_ood:
            self._check_known(self.known_indices)

    @property
    def calibration_count(self) -> int:
        """The calibration split's size (0: thresholds are fitted on the validation split)."""
        size = self.hparams.get("calibration_size")
        return self.hparams.val_size // 2 if size is None else size

    @property
    def calibration_split(self) -> str:
        """The name of the split thresholds are fitted on, for thresholds.json."""
        return f"{self.name} {'calibration' if self.calibration_count else 'val'}"

    def make_source(self) -> Any:
        """Where the images come from: ``SOURCES[source_name]`` for the built-in datasets."""
        return SOURCES[self.source_name]

    def native_shape(self) -> tuple[int, int]:
        """(channels, side) of the dataset's own images."""
        return self.source.shape

    @property
    def downloadable(self) -> bool:
        return hasattr(self.source, "download")

    @property
    def is_ood(self) -> bool:
        return self.hparams.unknown_label is not None

    @property
    def known_indices(self) -> list[int]:
        """The source's class indices kept as known, in label order."""
        if self.known_classes is None:
            return list(range(len(self.source.classes)))
        return self.known_classes

    @property
    def class_names(self) -> list[str]:
        """Names of labels 0..K-1 (the single name UNKNOWN in the OOD role)."""
        if self.is_ood:
            return [UNKNOWN_NAME]
        return [self.source.classes[c] for c in self.known_indices]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        if not self.source.available(self.data_dir) and self.hparams.download and self.downloadable:
            try:
                self.source.download(self.data_dir)
            except DatasetNotFoundError as e:
                raise self._how_to_point(e) from None

    def _how_to_point(self, error: DatasetNotFoundError) -> DatasetNotFoundError:
        """``error`` with the settings that point osr at the dataset, and the download only
        where it is on."""
        key = "ood.sets.<name>" if self.is_ood else "data"
        fix = (
            f"Point osr at a local copy: {key}.data_dir=/path/to/data for this dataset, or "
            "paths.data_dir=/path/to/data (or export OSR_DATA_DIR=/path/to/data) for every one"
        )
        if self.hparams.download and self.downloadable:
            fix += ", or run once with internet so that it is downloaded"
        return DatasetNotFoundError(f"{error} {fix}.")

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self._make_splits()

    @phase("data_setup")
    def _make_splits(self) -> None:
        test_x, test_y = self._load(train=False)
        if self.is_ood:
            test_y = torch.full_like(test_y, self.hparams.unknown_label)
            self.test_set = self._limited(test_x, test_y)
            return
        known = self.known_indices
        relabel = torch.full((len(self.source.classes),), -1, dtype=torch.long)
        relabel[torch.tensor(known)] = torch.arange(len(known))

        train_x, train_y = self._load(train=True)
        keep = relabel[train_y] >= 0
        train_x, train_y = train_x[keep], relabel[train_y[keep]]
        if not 0 < self.hparams.val_size < len(train_y):
            raise OSRError(
                f"data.val_size={self.hparams.val_size} must be between 1 and the "
                f"{len(train_y)} training images of {self.name}; set data.val_size accordingly."
            )
        g = torch.Generator().manual_seed(self.hparams.seed)
        order = torch.randperm(len(train_y), generator=g)
        held, train_idx = order[: self.hparams.val_size], order[self.hparams.val_size :]
        calibration_idx, val_idx = held[: self.calibration_count], held[self.calibration_count :]
        self.train_set = TensorDataset(train_x[train_idx], train_y[train_idx])
        self.val_set = TensorDataset(train_x[val_idx], train_y[val_idx])
        if self.calibration_count:
            self.calibration_set = TensorDataset(train_x[calibration_idx], train_y[calibration_idx])
        fit_limit = self.hparams.fit_limit
        if fit_limit is not None and fit_limit < len(train_idx):
            self.fit_set = TensorDataset(*(t[:fit_limit] for t in self.train_set.tensors))
            missing = set(range(len(known))) - set(self.fit_set.tensors[1].tolist())
            if missing:
                raise OSRError(
                    f"data.fit_limit={fit_limit}: the first {fit_limit} training images of "
                    f"{self.name} hold no image of class {sorted(missing)}, which the detectors "
                    "are fitted on. Raise data.fit_limit, or set it to null (every image)."
                )

        is_known = relabel[test_y] >= 0
        self.test_set = self._limited(test_x[is_known], relabel[test_y[is_known]])
        if not is_known.all():
            unknown_y = torch.full_like(test_y[~is_known], len(known))
            self.unknown_sets = {
                f"{self.name}_unknown": self._limited(test_x[~is_known], unknown_y)
            }

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        """A split at ``input_shape``'s size (channels are the transform's job: cheaper on
        the batch than on the whole set)."""
        try:
            images, labels = self.source.load(self.data_dir, train=train, cache_dir=self.cache_dir)
        except DatasetNotFoundError as e:
            raise self._how_to_point(e) from None
        return resize(images, self.input_shape[-1]), labels

    def _check_known(self, known: list[int]) -> None:
        n = len(self.source.classes)
        if len(known) < 2 or len(set(known)) != len(known) or not all(0 <= c < n for c in known):
            raise OSRError(
                f"data.known_classes={known} for {self.name} must be at least two distinct class "
                f"indices in 0..{n - 1}, e.g. data.known_classes=[0,1,2,3,4,5]."
            )

    def _limited(self, x: Tensor, y: Tensor) -> TensorDataset:
        limit = self.hparams.test_limit
        if limit is not None and limit < len(y):
            g = torch.Generator().manual_seed(self.hparams.seed)
            keep = torch.randperm(len(y), generator=g)[:limit].sort().values
            x, y = x[keep], y[keep]
        return TensorDataset(x, y)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self._splits():
            raise RuntimeError(
                f"{type(self).__name__} has no {split} split"
                + (" in its OOD role" if self.is_ood else "; call setup() first")
            )
        trainer = self.trainer
        device = self._data_device()
        if self._splits()[split].tensors[0].device != device:
            self._move_to(device)
        dataset = self._splits()[split]
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        if not train and device.type != "cpu":
            batch_size = max(batch_size, self.hparams.device_eval_batch_size)
        sampler = ShardedBatchSampler(
            len(dataset),
            batch_size,
            shuffle=train,
            seed=self.hparams.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            pad=train,
            device=device,
            drop_last=train and self.hparams.drop_last,
        )
        options = {
            "sampler": sampler,
            "batch_size": None,
            "num_workers": self.hparams.num_workers,
            "persistent_workers": self.hparams.num_workers > 0,
            # its own generator: creating an iterator must not draw from the global RNG,
            # or a resumed run would see different dropout and blur than an uninterrupted one
            "generator": torch.Generator().manual_seed(self.hparams.seed),
        }
        if train:
            return ResumableDataLoader(
                dataset,
                batches_done=self._batches_trained,
                epoch_batches=lambda: self.trainer.num_training_batches,
                **options,
            )
        return TensorBatchLoader(dataset, **options)

    def _data_device(self) -> torch.device:
        """Where batches are drawn: the trainer's accelerator when the data is kept there."""
        cpu = torch.device("cpu")
        if self.trainer is None:
            return cpu
        device = self.trainer.strategy.root_device
        if device.type == "cpu" or self.hparams.on_device is False:
            return cpu
        if self.hparams.on_device == "auto" and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self._nbytes() > free / 4:
                return cpu
        return device

    def _splits(self) -> dict[str, TensorDataset]:
        named = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        named |= {"calibration": self.calibration_set}
        named |= {"fit": self.fit_set}  # a view of the training split's first images
        return {k: v for k, v in {**named, **self.unknown_sets}.items() if v is not None}

    def _nbytes(self) -> int:
        return sum(t.nbytes for ds in self._splits().values() for t in ds.tensors)

    def _move_to(self, device: torch.device) -> None:
        """Every split's tensors to ``device``, once (the images stay uint8)."""
        for name, ds in self._splits().items():
            moved = TensorDataset(*(t.to(device) for t in ds.tensors))
            if name in self.unknown_sets:
                self.unknown_sets[name] = moved
            else:
                setattr(self, f"{name}_set", moved)

    def _batches_trained(self) -> int:
        """Batches of the current epoch whose optimizer step has been taken."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def train_eval_dataloader(self) -> DataLoader:
        """The training split in order (its first ``fit_limit`` images), in evaluation
        batches, never augmented: what the detectors that need it are fitted on."""
        return self._loader("fit" if self.fit_set is not None else "train", train=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def calibration_dataloader(self) -> DataLoader:
        """The images thresholds are fitted on: the calibration split, or the validation split
        where there is none (``calibration_size=0``)."""
        return self._loader("calibration" if self.calibration_count else "val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def unknown_dataloaders(self) -> dict[str, DataLoader]:
        """Loaders of the held-out classes' test images (labelled UNKNOWN), by set name."""
        return {name: self._loader(name, train=False) for name in self.unknown_sets}

    def iterate(self, loader: DataLoader, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """An evaluation loader's batches on ``device``, transformed (never augmented)."""
        transform = self.transform.to(device)
        for images, labels in loader:
            yield transform(images.to(device)), labels.to(device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        augment = self.trainer is not None and self.trainer.training
        if self.transform.mean.device != images.device:  # moved once, not every batch
            self.transform.to(images.device)
        return self.transform(images, augment=augment), labels


class MNISTDataModule(ImageDataModule):
    source_name = "MNIST"
    name = "mnist"
    flippable = False


class FashionMNISTDataModule(ImageDataModule):
    source_name = "FashionMNIST"
    name = "fashion_mnist"


class CIFAR10DataModule(ImageDataModule):
    source_name = "CIFAR10"
    name = "cifar10"
