"""The training epoch's figures (loss, accuracy, loss terms) as one running sum on the device."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

# a batch's (values, logits, targets), queued by ``EpochSums.add``
Batch = tuple[list[Tensor], Tensor, Tensor]


class EpochSums(Metric):
    """Image-weighted means of named per-batch values, and the accuracy, for one epoch.

    One float64 state tensor holds, per name, the sum of value x images, then the correct
    predictions and the images seen; it is synced across ranks and checkpointed like any
    torchmetrics state. A NaN or infinite value makes its sum so until the epoch ends, which is
    how a non-finite loss is found without a check in every step.

    A training step only ``add``s references to its batch's values, logits and targets: no
    tensor operation. They are summed together every ``flush_every`` batches, and before
    anything reads the sums (``compute``, ``sync``, ``total``). Even six small operations a step
    cost about 0.2 ms of a 10 ms ConvNet step on a CPU in place (their code and data fall out
    of the caches between the network's kernels); a torchmetrics object per figure cost more.
    """

    full_state_update = False

    def __init__(self, names: tuple[str, ...], flush_every: int = 64) -> None:
        super().__init__()
        self.names = tuple(names)
        self.flush_every = flush_every
        self.add_state(
            "sums", torch.zeros(len(self.names) + 2, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self._pending: list[Batch] = []

    def add(self, values: list[Tensor], logits: Tensor, target: Tensor) -> None:
        """Queue one batch: ``values`` one 0-d tensor per name, each the batch's mean;
        ``logits`` (B, K), detached."""
        self._pending.append((values, logits, target))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Add the queued batches to the sums."""
        if self._pending:
            pending, self._pending = self._pending, []
            self.update(pending)

    def update(self, batches: list[Batch]) -> None:
        """Add ``batches`` to the sums: each value weighted by its batch's images (batches of
        one size are summed together, so no weights tensor is built from Python numbers)."""
        k = len(self.names)
        by_size: dict[int, list[Tensor]] = {}
        for values, _, target in batches:
            by_size.setdefault(target.numel(), []).extend(values)
        for size, values in by_size.items():
            self.sums[:k].add_(torch.stack(values).view(-1, k).sum(dim=0), alpha=size)
        logits = torch.cat([b[1] for b in batches])
        target = torch.cat([b[2] for b in batches])
        self.sums[k].add_((logits.argmax(dim=1) == target).sum())
        self.sums[k + 1].add_(len(target))

    def compute(self) -> dict[str, Tensor]:
        """Each name's mean and ``acc``, over the images of the epoch so far."""
        *totals, correct, images = self.sums.unbind()
        means = {name: total / images for name, total in zip(self.names, totals, strict=True)}
        return {**means, "acc": correct / images}

    def total(self, name: str) -> Tensor:
        """The running sum of ``name`` (value x images) since the epoch began."""
        self.flush()
        return self.sums[self.names.index(name)]

    def _wrap_compute(self, compute: Callable) -> Callable:
        wrapped = super()._wrap_compute(compute)

        def flushed(*args: Any, **kwargs: Any) -> Any:
            self.flush()  # before torchmetrics' cache and sync
            return wrapped(*args, **kwargs)

        return flushed

    def sync(self, *args: Any, **kwargs: Any) -> None:
        self.flush()  # what a checkpoint or another rank reads includes every batch
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        self._pending = []
        super().reset()
