"""Batched tensor transforms applied on the batch's device (no per-sample PIL work)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class BatchTransform(nn.Module):
    """uint8 images -> normalized float images, optionally blurred (training augmentation).

    With 3-channel statistics, RGB input is normalized per channel and then converted to
    grayscale (the notebook's CIFAR-10 pipeline); with 1-channel statistics RGB input is
    converted to grayscale first, then normalized.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        blur_kernel_size: int = 3,
        blur_sigma: Sequence[float] = (0.1, 1.0),
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(_as_seq(mean)), dtype=torch.float32)
        std_t = torch.as_tensor(list(_as_seq(std)), dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.numel() not in (1, 3):
            raise OSRError(
                f"data.mean={mean} and data.std={std} need 1 value each (grayscale) or 3 "
                "(per RGB channel), e.g. data.mean=0.13 data.std=0.31"
            )
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))

    def forward(self, images: Tensor, augment: bool = False) -> Tensor:
        x = images.to(self.mean.device, torch.float32) / 255.0
        if x.shape[1] == 3 and self.mean.shape[1] == 1:
            x = to_grayscale(x)
        x = (x - self.mean) / self.std
        if x.shape[1] == 3:
            x = to_grayscale(x)
        if augment:
            lo, hi = self.blur_sigma
            sigma = torch.empty(x.shape[0], device=x.device).uniform_(lo, hi)
            x = gaussian_blur(x, self.blur_kernel_size, sigma)
        return x


def _as_seq(v: float | Sequence[float]) -> Sequence[float]:
    return [v] if isinstance(v, int | float) else v
