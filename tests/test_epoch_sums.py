"""The training epoch's figures: one running sum against numpy's and sklearn's."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from osr.modules.epoch_sums import EpochSums
from osr.utils.metric_state import load_metric_states, metric_states


def test_figures_are_image_weighted_means_and_the_accuracy_of_every_image():
    g = torch.Generator().manual_seed(0)
    sums = EpochSums(("loss", "ce"), flush_every=2)  # flushes after 2 and 4, then in compute
    sizes, losses, ces, preds, targets = [64, 17, 64, 64, 17], [], [], [], []
    for n in sizes:
        logits = torch.randn(n, 6, generator=g)
        target = torch.randint(0, 6, (n,), generator=g)
        loss, ce = torch.rand(2, generator=g)
        sums.add([loss, ce], logits, target)
        losses.append(loss.item())
        ces.append(ce.item())
        preds.append(logits.argmax(1))
        targets.append(target)
    assert sums.update_count == 2  # one batch still queued
    figures = sums.compute()
    assert list(figures) == ["loss", "ce", "acc"]
    assert figures["loss"].item() == pytest.approx(np.average(losses, weights=sizes), rel=1e-12)
    assert figures["ce"].item() == pytest.approx(np.average(ces, weights=sizes), rel=1e-12)
    expected_acc = accuracy_score(torch.cat(targets), torch.cat(preds))
    assert 0 < expected_acc < 1
    assert figures["acc"].item() == pytest.approx(expected_acc, abs=1e-12)
    sums.add([torch.tensor(9.0), torch.tensor(9.0)], torch.eye(6)[:2], torch.arange(2))
    sums.reset()  # a new epoch: what was queued goes too
    sums.add([torch.tensor(2.0), torch.tensor(3.0)], torch.eye(6)[:4], torch.arange(4))
    assert {k: v.item() for k, v in sums.compute().items()} == {"loss": 2.0, "ce": 3.0, "acc": 1.0}


def test_queued_batches_count_in_every_read_of_the_sums():
    sums = EpochSums(("loss",))
    sums.add([torch.tensor(1.5)], torch.eye(3), torch.tensor([0, 1, 1]))
    assert metric_states({"s": sums})["s"]["values"]["sums"].tolist() == [4.5, 2.0, 3.0]
    sums.add([torch.tensor(float("inf"))], torch.eye(3), torch.arange(3))
    assert sums.total("loss").item() == float("inf")
    sums.add([torch.tensor(1.0)], torch.eye(3), torch.arange(3))
    assert sums.compute()["acc"].item() == pytest.approx(8 / 9)
    sums.add([torch.tensor(1.0)], torch.eye(3), torch.tensor([2, 2, 2]))
    assert sums.compute()["acc"].item() == pytest.approx(9 / 12)  # not the cached 8 / 9


def test_float32_sums_of_older_checkpoints_load_as_float64():
    sums = EpochSums(("loss",))
    saved = {"sums": {"values": {"sums": torch.tensor([3.0, 5.0, 6.0])}, "updates": 2}}
    load_metric_states({"sums": sums}, saved)
    assert sums.sums.dtype == torch.float64
    sums.add([torch.tensor(1.0)], torch.eye(2), torch.tensor([0, 0]))
    assert {k: v.item() for k, v in sums.compute().items()} == {"loss": 0.625, "acc": 0.75}
