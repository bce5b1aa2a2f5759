"""Torchmetrics states in and out of a checkpoint."""

from typing import Any

from torchmetrics import Metric


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
            current = getattr(metric, key)  # its device, and its dtype (float32 in older runs)
            setattr(metric, key, value.to(current.device, current.dtype))
        metric._update_count = states[name]["updates"]  # no public setter; compute() checks it
