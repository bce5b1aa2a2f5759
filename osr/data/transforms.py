"""Batched tensor transforms applied on the batch's device (no per-sample PIL work)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from osr.data.augment import NaturalImageAugment
from osr.utils.errors import OSRError

# ITU-R 601-2 luma, the weights torchvision's Grayscale uses.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def to_grayscale(x: Tensor) -> Tensor:
    """(B,3,H,W) float -> (B,1,H,W)."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Blur each image with its own sigma, as torchvision's ``gaussian_blur`` would per image.

    x: (B,C,H,W) float; sigma: (B,). Separable kernel, reflect padding.
    """
    b, c, h, w = x.shape
    half = kernel_size // 2
    offsets = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).view(b, 1, kernel_size, 1, 1)
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    rows = sum(kernel[:, :, i] * padded[:, :, :, i : i + w] for i in range(kernel_size))
    return sum(kernel[:, :, i] * rows[:, :, i : i + h, :] for i in range(kernel_size))


def affine(x: Tensor, degrees: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image by ``degrees`` (B,) about its centre, counterclockwise as displayed
    (rows down), then move it by ``shift`` (B, 2) pixels (right, down); bilinear, zeros
    outside. One batched resampling for the whole batch.
    """
    b, _, h, w = x.shape
    angle = degrees.to(torch.float32).deg2rad()
    cos, sin = angle.cos(), angle.sin()
    # affine_grid maps each output position to the input position it samples, in [-1, 1]
    # (a pixel spans 2/size): the inverse of the motion of the content
    tx, ty = -shift[:, 0].float() * 2 / w, -shift[:, 1].float() * 2 / h
    theta = torch.stack(
        [
            torch.stack([cos, -sin, cos * tx - sin * ty], dim=1),
            torch.stack([sin, cos, sin * tx + cos * ty], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(x: Tensor, translate: float, rotate: float) -> Tensor:
    """Shift each image by up to ``translate`` pixels along each axis and rotate it by up to
    ``rotate`` degrees, drawn uniformly and independently per image on ``x``'s device: random
    crops with padding and small rotations in one resampling. Never flips (a flipped digit is
    another symbol or none).
    """
    b = x.shape[0]
    degrees = torch.empty(b, device=x.device).uniform_(-rotate, rotate)
    shift = torch.empty(b, 2, device=x.device).uniform_(-translate, translate)
    return affine(x, degrees, shift)


class BatchTransform(nn.Module):
    """uint8 images -> normalized float images with ``channels`` channels; in training,
    optionally augmented.

    Channels: gray input is repeated over three channels for an RGB model; RGB input for a
    gray model is converted to grayscale, before normalizing with 1-channel statistics or,
    with 3-channel statistics (the notebook's CIFAR-10 pipeline), after.

    Training augmentation, each drawn per image: shifts of up to ``translate`` pixels and
    rotations of up to ``rotate`` degrees (0 = off), then ``natural`` (crop, flip, policy
    and Cutout for natural images, ``NaturalImageAugment``), then a Gaussian blur of
    ``blur_kernel_size`` (0 = off) with sigma in ``blur_sigma``.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        blur_kernel_size: int = 3,
        blur_sigma: Sequence[float] = (0.1, 1.0),
        translate: float = 0.0,
        rotate: float = 0.0,
        channels: int = 1,
        natural: NaturalImageAugment | None = None,
    ) -> None:
        super().__init__()
        if translate < 0 or rotate < 0:
            raise OSRError(
                f"data.translate={translate} and data.rotate={rotate} are the largest shift "
                "(pixels) and rotation (degrees) of the training augmentation: use values "
                ">= 0, e.g. data.translate=2 data.rotate=10 (0 turns them off)"
            )
        mean_t = torch.as_tensor(list(_as_seq(mean)), dtype=torch.float32)
        std_t = torch.as_tensor(list(_as_seq(std)), dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.numel() not in (1, 3):
            raise OSRError(
                f"data.mean={mean} and data.std={std} need 1 value each (grayscale) or 3 "
                "(per RGB channel), e.g. data.mean=0.13 data.std=0.31"
            )
        if channels not in (1, 3):
            raise OSRError(f"data.channels={channels}: use 1 (grayscale) or 3 (RGB)")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.translate, self.rotate = float(translate), float(rotate)
        self.channels = channels
        self.natural = natural if natural is not None else NaturalImageAugment()

    def forward(self, images: Tensor, augment: bool = False) -> Tensor:
        x = images.to(self.mean.device, torch.float32) / 255.0
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if augment:
            if self.translate or self.rotate:
                # on [0, 1] pixels, so what moves in from outside is black background
                x = random_affine(x, self.translate, self.rotate)
            x = self.natural.pixels(x)
        if x.shape[1] == 3 and self.channels == 1 and self.mean.shape[1] == 1:
            x = to_grayscale(x)
        x = (x - self.mean) / self.std
        if x.shape[1] == 3 and self.channels == 1:
            x = to_grayscale(x)
        if augment:
            x = self.natural.normalized(x)
            if self.blur_kernel_size:
                lo, hi = self.blur_sigma
                sigma = torch.empty(x.shape[0], device=x.device).uniform_(lo, hi)
                x = gaussian_blur(x, self.blur_kernel_size, sigma)
        return x


def resize(images: Tensor, size: int) -> Tensor:
    """uint8 (N,C,H,W) images at ``size`` x ``size`` (antialiased bilinear), once at setup."""
    if images.shape[-2:] == (size, size):
        return images
    return TF.resize(images, [size, size], antialias=True)


def _as_seq(v: float | Sequence[float]) -> Sequence[float]:
    return [v] if isinstance(v, int | float) else v
