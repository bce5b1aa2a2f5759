from osr.data.datamodules import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
)
from osr.data.local import FolderDataModule
from osr.data.transforms import BatchTransform

__all__ = [
    "BatchTransform",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "ImageDataModule",
    "MNISTDataModule",
]
