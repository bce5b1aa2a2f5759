"""Learning-rate schedules stepped per optimizer step."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from osr.utils.errors import OSRError


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    final_lr_fraction: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over the first ``warmup_fraction`` of ``total_steps``, then a cosine
    decay from the optimizer's lr to ``final_lr_fraction`` of it at the last step.

    ``total_steps`` is filled in by the LightningModule (the trainer's estimated optimizer
    steps), so the schedule follows ``trainer.max_epochs`` and ``limit_train_batches``.
    """
    if not 0 <= warmup_fraction < 1 or not 0 <= final_lr_fraction <= 1:
        raise OSRError(
            f"model.scheduler: warmup_fraction={warmup_fraction} must lie in [0, 1) and "
            f"final_lr_fraction={final_lr_fraction} in [0, 1], e.g. warmup_fraction=0.05"
        )
    total = max(int(total_steps), 1)
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return final_lr_fraction + (1 - final_lr_fraction) * cosine

    return LambdaLR(optimizer, factor)
