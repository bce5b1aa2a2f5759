"""Gathering per-sample results across DDP ranks whose shards differ in size."""

import torch
import torch.distributed as dist
from torch import Tensor


def gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (first dim = samples) from every rank, in rank order.

    Without an initialized process group this returns the tensor unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
