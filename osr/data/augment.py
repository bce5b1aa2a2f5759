"""Training augmentation for natural images, drawn per image and batched on the batch's device
(kornia.augmentation): random crops with padding, horizontal flips, Cutout and a
RandAugment-style policy. Digits use the shifts, rotations and blur of ``transforms.py``.
"""

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from osr.utils.errors import OSRError

# RandAugment's magnitude scale (Cubuk et al., 2020): 0..30
MAX_MAGNITUDE = 30


def policy_ops(magnitude: float) -> dict[str, nn.Module]:
    """RandAugment's operations (Cubuk et al., 2020, and its reference implementation) at
    ``magnitude`` on its 0..30 scale, each drawing its own strength per image up to that
    magnitude and in either direction where the operation has one."""
    f = magnitude / MAX_MAGNITUDE
    factor = (1 - 0.9 * f, 1 + 0.9 * f)  # enhancement factors: 1 is the image itself
    shear = 16.7 * f  # degrees: a shear of 0.3 at the top magnitude
    return {
        "identity": nn.Identity(),
        "autocontrast": K.RandomAutoContrast(p=1.0),
        "equalize": K.RandomEqualize(p=1.0),
        "rotate": K.RandomRotation(degrees=30 * f, p=1.0),
        "solarize": K.RandomSolarize(thresholds=(1 - f, 1.0), additions=0.0, p=1.0),
        "posterize": K.RandomPosterize(bits=max(1, round(8 - 4 * f)), p=1.0),
        "color": K.RandomSaturation(saturation=factor, p=1.0),
        "contrast": K.RandomContrast(contrast=factor, p=1.0),
        "brightness": K.RandomBrightness(brightness=factor, p=1.0),
        "sharpness": K.RandomSharpness(sharpness=factor, p=1.0),
        "shear_x": K.RandomShear(shear=(-shear, shear, 0.0, 0.0), p=1.0),
        "shear_y": K.RandomShear(shear=(0.0, 0.0, -shear, shear), p=1.0),
        "translate": K.RandomAffine(degrees=0.0, translate=(0.45 * f, 0.45 * f), p=1.0),
    }


class RandAugmentPerImage(nn.Module):
    """RandAugment with the operations drawn for each image, not once per batch (kornia's
    and torchvision's RandAugment draw them once for a whole batch tensor): each image gets
    ``num_ops`` distinct operations chosen uniformly, applied in the table's order. Each
    operation runs once per batch, on the images that drew it."""

    def __init__(self, num_ops: int, magnitude: float) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(policy_ops(magnitude))
        if not 0 <= num_ops <= len(self.ops) or not 0 <= magnitude <= MAX_MAGNITUDE:
            raise OSRError(
                f"data.randaugment_ops={num_ops} and data.randaugment_magnitude={magnitude}: "
                f"use 0..{len(self.ops)} operations per image and a magnitude in "
                f"0..{MAX_MAGNITUDE}, e.g. data.randaugment_ops=1 data.randaugment_magnitude=6"
            )
        self.num_ops = num_ops

    def choose(self, n: int, device: torch.device) -> Tensor:
        """(n, number of operations) bool: the ``num_ops`` distinct operations of each image."""
        draw = torch.rand(n, len(self.ops), device=device)
        chosen = draw.argsort(dim=1)[:, : self.num_ops]
        return torch.zeros_like(draw, dtype=torch.bool).scatter_(1, chosen, True)

    def forward(self, x: Tensor, picked: Tensor | None = None) -> Tensor:
        """``x`` with each image's operations applied (``picked``: ``choose``'s, drawn here
        when None)."""
        if not self.num_ops:
            return x
        if picked is None:
            picked = self.choose(len(x), x.device)
        for k, op in enumerate(self.ops.values()):
            rows = picked[:, k].nonzero().squeeze(1)
            if len(rows) and not isinstance(op, nn.Identity):
                x = x.index_copy(0, rows, op(x.index_select(0, rows)).to(x.dtype))
        return x


class NaturalImageAugment(nn.Module):
    """Per-image training augmentation of natural images.

    On [0, 1] pixels: the RandAugment-style policy (``randaugment_ops`` operations of
    ``randaugment_magnitude``; 0 ops: off), a random crop of the image padded by
    ``crop_padding`` pixels on each side (reflected), a horizontal flip with probability 1/2
    (``flip``). Then, on normalized pixels, ``cutout``: a square of that side set to 0 (the
    mean) at a random place in each image (DeVries & Taylor, 2017; 0: off).
    """

    def __init__(
        self,
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        randaugment_ops: int = 0,
        randaugment_magnitude: float = 9,
    ) -> None:
        super().__init__()
        if crop_padding < 0 or cutout < 0:
            raise OSRError(
                f"data.crop_padding={crop_padding} and data.cutout={cutout} are pixels: use "
                "values >= 0, e.g. data.crop_padding=4 data.cutout=8 (0 turns them off)"
            )
        self.randaugment = RandAugmentPerImage(randaugment_ops, randaugment_magnitude)
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout
        self.hflip = K.RandomHorizontalFlip(p=0.5)

    @property
    def active(self) -> bool:
        return bool(self.randaugment.num_ops or self.crop_padding or self.flip or self.cutout)

    def pixels(self, x: Tensor) -> Tensor:
        """The augmentations of [0, 1] pixels: policy, crop, flip."""
        x = self.randaugment(x)
        if self.crop_padding:
            pad = self.crop_padding
            crop = K.RandomCrop(x.shape[-2:], padding=pad, padding_mode="reflect", p=1.0)
            x = crop(x)
        if self.flip:
            x = self.hflip(x)
        return x

    def normalized(self, x: Tensor) -> Tensor:
        """Cutout, on normalized pixels (0 is the mean colour)."""
        if not self.cutout:
            return x
        h, w = x.shape[-2:]
        area = min(1.0, self.cutout**2 / (h * w))
        erase = K.RandomErasing(scale=(area, area), ratio=(1.0, 1.0), value=0.0, p=1.0)
        return erase(x)
