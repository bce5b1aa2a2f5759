"""Test-time views are what training's augmentation makes of an image's pixels: rotations (and
digits' shifts) bring in black, natural images' shifts their reflected borders, whatever the
normalization."""

import functools

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from osr.data.transforms import BatchTransform, affine
from osr.modules.views import TestViews as Views  # not a test class
from osr.utils.config import CONFIG_DIR, plain

ROTATIONS = [5.0, -5.0, 10.0, -10.0]
CIFAR_MEAN = [0.49139968, 0.48215841, 0.44653091]
CIFAR_STD = [0.24703223, 0.24348513, 0.26158784]


@functools.cache
def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def uint8_images(n: int, channels: int, size: int, seed: int = 0) -> Tensor:
    """Images with content up to their borders, so that padding shows everywhere."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def rotated_pixels(images: Tensor, degrees: list[float]) -> Tensor:
    """Every image rotated by each angle in turn, on its pixels, by training's ``affine``
    (black fill): float pixel values, which ``BatchTransform`` scales and normalizes."""
    angles = torch.tensor(degrees).repeat_interleave(len(images))
    pixels = images.float().repeat(len(degrees), 1, 1, 1)
    return affine(pixels, angles, torch.zeros(len(angles), 2))


def views_of(views: Views, transform: BatchTransform, images: Tensor) -> list[Tensor]:
    """The views of the normalized images, one tensor per view."""
    with torch.no_grad():
        return list(views(transform(images)).split(len(images)))


@pytest.mark.parametrize(
    ("mean", "std", "raw", "channels"),
    [
        (0.13, 0.31, 1, 1),  # digits
        (CIFAR_MEAN, CIFAR_STD, 3, 3),  # natural images, per-channel statistics
        (CIFAR_MEAN, CIFAR_STD, 3, 1),  # a gray model of them: normalized, then gray
        (0.5, 0.25, 1, 3),  # gray images repeated over three channels
    ],
)
def test_rotated_views_are_the_rotated_pixels_filled_with_black_then_normalized(
    mean, std, raw, channels
):
    transform = BatchTransform(mean, std, blur_kernel_size=0, channels=channels)
    views = Views(ROTATIONS, mean=mean, std=std)
    images = uint8_images(3, raw, 28)
    got = torch.cat(views_of(views, transform, images)[1:])
    expected = transform(rotated_pixels(images, ROTATIONS))
    assert (got - expected).abs().max() < 1e-4
    black = transform(torch.zeros(1, raw, 1, 1, dtype=torch.uint8))
    assert torch.allclose(got[..., 0, 0], black[..., 0, 0].expand(len(got), -1), atol=1e-4)


def test_shifted_views_pad_as_the_training_shifts_do():
    """Digits (no crop padding) are shifted by training's translations, which bring in black;
    natural images by crops of the image padded with its reflected borders."""
    images = uint8_images(3, 1, 28)
    transform = BatchTransform(0.13, 0.31, blur_kernel_size=0)
    digits = Views(shift=2, mean=0.13, std=0.31, crop_padding=0)
    _, down_right, up_left = views_of(digits, transform, images)
    zero = torch.zeros(len(images))
    for got, moved in ((down_right, 2.0), (up_left, -2.0)):
        shift = torch.full((len(images), 2), moved)
        expected = transform(affine(images.float(), zero, shift))
        assert (got - expected).abs().max() < 1e-4, moved

    images = uint8_images(3, 3, 32)
    transform = BatchTransform(CIFAR_MEAN, CIFAR_STD, blur_kernel_size=0, channels=3)
    natural = Views(shift=2, mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4)
    _, down_right, up_left = views_of(natural, transform, images)
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    for got, crop in ((down_right, padded[..., :32, :32]), (up_left, padded[..., 4:, 4:])):
        expected = transform(torch.from_numpy(np.ascontiguousarray(crop)))
        assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("experiment", "shift_fill"),
    [("osr_split_best", "black"), ("osr_split_cifar10_best", "reflect")],
)
def test_the_configured_views_pad_as_the_configured_training_does(experiment, shift_fill):
    """The headline experiments' modules, built from the config as osr.train builds them: the
    views of a batch normalized by the data's transform are those of its rotated (and
    shifted) pixels, normalized."""
    cfg = compose_train(f"experiment={experiment}", "model.test_rotations=[5,-5,10,-10]")
    datamodule = instantiate(cfg.data)
    module = instantiate(
        cfg.model,
        class_names=[str(c) for c in range(6)],
        input_shape=datamodule.input_shape,
        detectors=plain(cfg.detectors),
    )
    channels, size = datamodule.input_shape[:2]
    images = uint8_images(4, channels, size)
    transform = datamodule.transform
    views = views_of(module.test_views, transform, images)
    got = torch.cat(views[1 : 1 + len(ROTATIONS)])
    expected = transform(rotated_pixels(images, ROTATIONS))
    assert (got - expected).abs().max() < 1e-4
    assert module.test_views.reflect_shifts == (shift_fill == "reflect")
