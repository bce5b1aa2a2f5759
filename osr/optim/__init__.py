"""Learning-rate schedules built from the ``model/scheduler`` config group."""

from osr.optim.schedules import warmup_cosine

__all__ = ["warmup_cosine"]
