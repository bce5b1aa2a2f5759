"""What resuming needs beyond Lightning's own checkpoint state to continue bit for bit."""

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torchmetrics import Metric

from osr.csv_logger import ResumableCSVLogger


class RNGState(Callback):
    """Saves the global torch, numpy and random generator states in every checkpoint and
    restores them on resume, so dropout and blur continue the same random sequence."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        np_state = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
            "python": _python_state_to_plain(random.getstate()),
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal), gauss_next))


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


class CarryCSVRows(Callback):
    """Resuming from a checkpoint carries on the interrupted run's ``csv/metrics.csv``
    (see ``ResumableCSVLogger``) instead of starting the file again."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.carry_rows()


def metric_states(metrics: dict[str, Metric]) -> dict[str, Any]:
    """What each metric has accumulated, summed over all ranks (every rank must call this):
    Lightning checkpoints no metric states, yet a resumed epoch must report all its batches."""
    states: dict[str, Any] = {}
    for name, metric in metrics.items():
        with metric.sync_context():
            values = {
                key: value.detach().cpu().clone() for key, value in metric.metric_state.items()
            }
        states[name] = {"values": values, "updates": metric.update_count}
    return states


def load_metric_states(metrics: dict[str, Metric], states: dict[str, Any]) -> None:
    """Put ``metric_states`` back. Call it on one rank only: they hold every rank's share."""
    for name, metric in metrics.items():
        for key, value in states[name]["values"].items():
            setattr(metric, key, value.to(getattr(metric, key).device))
        metric._update_count = states[name]["updates"]  # no public setter; compute() checks it
