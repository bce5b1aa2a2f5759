"""Test-time views of a batch: the features every detector reads can be averaged over an
image and its rotated (and mirrored) copies."""

import torch
from torch import Tensor

from osr.data.transforms import affine


def test_time_views(x: Tensor, rotations: Tensor, flip: bool) -> Tensor:
    """The batch, then its copies rotated by each of ``rotations`` (degrees), then with
    ``flip`` the mirror images of all of these, stacked along the batch: (V * B, C, H, W)
    with V = (1 + len(rotations)) * (2 if flip else 1), view by view."""
    views = x
    if len(rotations):
        angles = rotations.repeat_interleave(len(x))
        shifts = angles.new_zeros(len(angles), 2)
        views = torch.cat([x, affine(x.repeat(len(rotations), 1, 1, 1), angles, shifts)])
    if flip:
        views = torch.cat([views, views.flip(-1)])
    return views
