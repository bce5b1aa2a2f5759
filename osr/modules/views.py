"""Test-time views of a batch: the features every detector reads can be averaged over an
image and its rotated, shifted and mirrored copies."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.data.transforms import affine
from osr.utils.errors import OSRError


def shifted(x: Tensor, dx: int, dy: int) -> Tensor:
    """``x`` moved by ``dx`` pixels right and ``dy`` down, the borders reflected."""
    pad = max(abs(dx), abs(dy))
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


class TestViews(nn.Module):
    """The views of each image: the image, its copies rotated by each of ``rotations``
    (degrees), its two copies shifted by ``shift`` pixels along the diagonal (down-right and
    up-left, borders reflected), then with ``flip`` the mirror images of all of these."""

    def __init__(self, rotations: Sequence[float] = (), flip: bool = False, shift: int = 0):
        super().__init__()
        if shift < 0:
            raise OSRError(f"model.test_shift={shift}: use a number of pixels >= 0 (0: off)")
        # a buffer, so the angles follow the module to its device
        rotations = torch.tensor([float(d) for d in rotations])
        self.register_buffer("rotations", rotations, persistent=False)
        self.flip, self.shift = flip, int(shift)

    @property
    def active(self) -> bool:
        return bool(len(self.rotations) or self.flip or self.shift)

    def forward(self, x: Tensor) -> Tensor:
        """(V * B, C, H, W): the views of the batch, stacked view by view."""
        views = [x]
        if len(self.rotations):
            angles = self.rotations.repeat_interleave(len(x))
            shifts = angles.new_zeros(len(angles), 2)
            views.append(affine(x.repeat(len(self.rotations), 1, 1, 1), angles, shifts))
        if self.shift:
            views += [shifted(x, self.shift, self.shift), shifted(x, -self.shift, -self.shift)]
        stacked = torch.cat(views) if len(views) > 1 else x
        return torch.cat([stacked, stacked.flip(-1)]) if self.flip else stacked
