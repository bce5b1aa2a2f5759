"""Index batches over in-memory tensors: one tensor index per batch instead of per sample."""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler


class ShardedBatchSampler(Sampler[Tensor]):
    """Yields index tensors of ``batch_size`` for one rank of ``num_replicas``.

    Shuffling is a function of (seed, epoch), so every rank draws the same order and takes its
    own slice. With ``pad=True`` (training) the order is wrapped around so that every rank gets
    the same number of batches, as ``DistributedSampler`` does; evaluation shards are left
    uneven and gathered with their true sizes. The indices are made on ``device``, where the
    data lives, so that a dataset resident on a GPU is indexed without a host round trip.
    ``drop_last`` drops a short last batch, so every batch has one shape (CUDA graphs).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pad: bool = False,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0  # batches of the current epoch already trained before a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def _padded_size(self) -> int:
        return -(-self.size // self.num_replicas) * self.num_replicas if self.pad else self.size

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        order = torch.cat([order, order[: self._padded_size - self.size]]).to(self.device)
        skip, self.skip = self.skip, 0
        yield from order[self.rank :: self.num_replicas].split(self.batch_size)[skip : len(self)]

    def __len__(self) -> int:
        shard = len(range(self.rank, self._padded_size, self.num_replicas))
        return shard // self.batch_size if self.drop_last else -(-shard // self.batch_size)


class TensorBatchLoader(DataLoader):
    """A DataLoader over a ``TensorDataset`` whose sampler yields index tensors
    (``batch_size=None``). Without worker processes it indexes the tensors itself: the same
    batches as the DataLoader's own iterator (a list per batch), without its per-batch
    machinery (fetcher, collation, profiler record), which cost about 25 us a batch on a CPU.
    """

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers > 0:
            return super().__iter__()
        tensors = self.dataset.tensors
        return ([t[index] for t in tensors] for index in self.sampler)


class ResumableDataLoader(TensorBatchLoader):
    """A ``TensorBatchLoader`` over a ``ShardedBatchSampler`` that resumes mid-epoch.

    Lightning saves ``state_dict()`` in every checkpoint and hands it back through
    ``load_state_dict()`` before iterating again. The number of batches already trained comes
    from ``batches_done`` (the trainer's progress), not from the iterator, which Lightning
    reads one batch ahead; ``epoch_batches`` is how many batches the trainer runs per epoch,
    fewer than the sampler holds when ``limit_train_batches`` cuts epochs short.
    """

    def __init__(
        self,
        *args: Any,
        batches_done: Callable[[], int],
        epoch_batches: Callable[[], int | float],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done
        self.epoch_batches = epoch_batches

    def state_dict(self) -> dict[str, int]:
        """Where training goes on: the next epoch's start once this epoch has run its batches."""
        epoch, done = self.sampler.epoch, self.batches_done()
        if done >= self.epoch_batches():
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, done = state_dict["epoch"], state_dict["batches_done"]
        if done >= len(self.sampler):  # a checkpoint written before state_dict moved epochs on
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = done
