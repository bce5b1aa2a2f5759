"""The training epoch's figures: one running sum against numpy's and sklearn's."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from osr.modules.epoch_sums import EpochSums
from osr.utils.metric_state import load_metric_states


def test_figures_are_image_weighted_means_and_the_accuracy_of_every_image():
    g = torch.Generator().manual_seed(0)
    sums = EpochSums(("loss", "ce"))
    sizes, losses, ces, preds, targets = [64, 64, 17], [], [], [], []
    for n in sizes:
        logits = torch.randn(n, 6, generator=g)
        target = torch.randint(0, 6, (n,), generator=g)
        loss, ce = torch.rand(2, generator=g)
        sums.update([loss, ce], logits, target)
        losses.append(loss.item())
        ces.append(ce.item())
        preds.append(logits.argmax(1))
        targets.append(target)
    figures = sums.compute()
    assert list(figures) == ["loss", "ce", "acc"]
    assert figures["loss"].item() == pytest.approx(np.average(losses, weights=sizes), rel=1e-6)
    assert figures["ce"].item() == pytest.approx(np.average(ces, weights=sizes), rel=1e-6)
    expected_acc = accuracy_score(torch.cat(targets), torch.cat(preds))
    assert 0 < expected_acc < 1
    assert figures["acc"].item() == pytest.approx(expected_acc, abs=1e-7)
    sums.reset()
    sums.update([torch.tensor(2.0), torch.tensor(3.0)], torch.eye(6)[:4], torch.arange(4))
    assert {k: v.item() for k, v in sums.compute().items()} == {"loss": 2.0, "ce": 3.0, "acc": 1.0}


def test_float32_sums_of_older_checkpoints_load_as_float64():
    sums = EpochSums(("loss",))
    saved = {"sums": {"values": {"sums": torch.tensor([3.0, 5.0, 6.0])}, "updates": 2}}
    load_metric_states({"sums": sums}, saved)
    assert sums.sums.dtype == torch.float64
    sums.update([torch.tensor(1.0)], torch.eye(2), torch.tensor([0, 0]))
    assert {k: v.item() for k, v in sums.compute().items()} == {"loss": 0.625, "acc": 0.75}
