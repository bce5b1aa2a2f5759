"""Test-time views of a batch: the features every detector reads can be averaged over an
image and its rotated, shifted and mirrored copies, padded as training's augmentation pads."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.data.transforms import affine, to_grayscale
from osr.utils.errors import OSRError


def shifted(x: Tensor, dx: int, dy: int, fill: Tensor | None = None) -> Tensor:
    """``x`` moved by ``dx`` pixels right and ``dy`` down; what moves in is ``fill`` (one
    value per channel, broadcast over ``x``), or the borders reflected when None."""
    pad = max(abs(dx), abs(dy))
    h, w = x.shape[-2:]
    if fill is None:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    else:
        padded = F.pad(x - fill, (pad, pad, pad, pad)) + fill
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


class TestViews(nn.Module):
    """The views of each image: the image, its copies rotated by each of ``rotations``
    (degrees), its two copies shifted by ``shift`` pixels along the diagonal (down-right and
    up-left), then with ``flip`` the mirror images of all of these.

    The views are what the training augmentation would make of the image's pixels: they
    take normalized images, so ``mean`` and ``std`` are the data's normalization (one value,
    or one per RGB channel). What a rotation brings into the frame is black (0 before
    normalization, -mean/std after), as ``osr.data.transforms.random_affine`` fills it. A
    shift brings in the reflected borders when training shifted by crops of the reflected
    image (``crop_padding`` > 0: natural images, ``NaturalImageAugment``), black when it did
    not (digits: ``random_affine``'s translations fill black). The defaults (mean 0, std 1,
    ``crop_padding`` None: reflected) are the views of checkpoints written before the
    normalization was passed here.
    """

    def __init__(
        self,
        rotations: Sequence[float] = (),
        flip: bool = False,
        shift: int = 0,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        crop_padding: int | None = None,
    ):
        super().__init__()
        if shift < 0:
            raise OSRError(f"model.test_shift={shift}: use a number of pixels >= 0 (0: off)")
        # buffers, so the angles and the black follow the module to its device
        rotations = torch.tensor([float(d) for d in rotations])
        self.register_buffer("rotations", rotations, persistent=False)
        mean_t, std_t = (torch.tensor(v, dtype=torch.float32).reshape(-1) for v in (mean, std))
        if mean_t.shape != std_t.shape or len(mean_t) not in (1, 3):
            raise OSRError(
                f"the test views' mean={mean} and std={std} need 1 value each (grayscale) or "
                "3 (per RGB channel): the data's normalization (data.mean, data.std)"
            )
        self.register_buffer("black", (-mean_t / std_t).view(1, -1, 1, 1), persistent=False)
        self.flip, self.shift = flip, int(shift)
        self.reflect_shifts = crop_padding is None or crop_padding > 0

    @property
    def active(self) -> bool:
        return bool(len(self.rotations) or self.flip or self.shift)

    def _black(self, x: Tensor) -> Tensor:
        """Black in ``x``'s normalized units: a gray model's input normalized with RGB
        statistics was converted to grayscale after normalizing (``BatchTransform``)."""
        black = self.black.to(x.dtype)
        return to_grayscale(black) if black.shape[1] == 3 and x.shape[1] == 1 else black

    def forward(self, x: Tensor) -> Tensor:
        """(V * B, C, H, W): the views of the batch, stacked view by view."""
        views = [x]
        black = self._black(x)
        if len(self.rotations):
            angles = self.rotations.repeat_interleave(len(x))
            shifts = angles.new_zeros(len(angles), 2)
            # affine fills with zeros: rotating x - black fills with black once it is added back
            moved = affine(x.repeat(len(self.rotations), 1, 1, 1) - black, angles, shifts)
            views.append(moved + black)
        if self.shift:
            fill = None if self.reflect_shifts else black
            views += [
                shifted(x, self.shift, self.shift, fill),
                shifted(x, -self.shift, -self.shift, fill),
            ]
        stacked = torch.cat(views) if len(views) > 1 else x
        return torch.cat([stacked, stacked.flip(-1)]) if self.flip else stacked
