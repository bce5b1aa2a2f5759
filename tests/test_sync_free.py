"""A training step never waits for the device: no .item(), bool(tensor) or list -> tensor.

On a GPU each of those blocks the host until the queued kernels have run. Counted here on the
CPU, where the same calls would be made.
"""

import pytest
import torch

from osr.utils.config import instantiate_module
from tests.test_models import make_module

HOST_SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__")


@pytest.fixture
def host_syncs(monkeypatch):
    calls: list[str] = []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    original_tensor = torch.tensor

    def tensor(data, *args, **kwargs):
        calls.append("torch.tensor")
        return original_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)
    return calls


@pytest.mark.parametrize(
    ("kind", "objective"),
    [
        ("baseline", "ce"),
        ("mlae", "ce"),
        # osr's own objectives; pytorch-ood's losses (logitnorm, center, ii) test their labels
        # for unknowns (drop_unknown) on the host
        ("baseline", "label_smoothing"),
        ("baseline", "cac"),
        ("mlae", "arpl"),
    ],
)
def test_training_step_and_update_make_no_host_sync(kind, objective, train_cfg, host_syncs):
    cfg = train_cfg(f"model={kind}", f"objective={objective}")
    module = instantiate_module(cfg, class_names=[str(c) for c in range(10)])
    optimizer = module.build_optimizer()  # the configured (fused) Adam
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    module.train()
    for step in range(4):
        if step == 1:
            host_syncs.clear()  # the optimizer makes its state on its first step
        loss = module.training_step((x, y), step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    module.train_sums.flush()  # what every 64th step also does
    assert host_syncs == []
    module.check_finite_loss("in the test")  # the one deliberate sync, outside the step
    assert host_syncs == ["item"]


def test_a_nonfinite_loss_is_found_in_the_running_sum_until_the_epoch_ends():
    module = make_module("baseline")
    logits, y = torch.eye(10)[:4], torch.arange(4)
    module.train_sums.add([torch.tensor(1.5)], logits, y)
    module.check_finite_loss("now")
    module.train_sums.add([torch.tensor(float("inf"))], logits, y)
    module.train_sums.add([torch.tensor(2.0)], logits, y)  # finite again: still caught
    with pytest.raises(Exception, match=r"became inf in epoch 0, now; training stopped"):
        module.check_finite_loss("now")
    module.train_sums.add([torch.tensor(float("nan"))], logits, y)
    with pytest.raises(Exception, match=r"became nan in epoch 0, now"):
        module.check_finite_loss("now")
    module.train_sums.reset()  # a new epoch
    module.check_finite_loss("now")


@pytest.mark.slow
def test_lightnings_hook_name_bookkeeping_skips_module_setattr(train_cfg, monkeypatch):
    """Lightning records the running hook in ``_current_fx_name`` some forty times a step; the
    module stores it directly, not through nn.Module.__setattr__ and its checks for parameters,
    buffers and submodules, and ``self.log`` (which reads it) still works in every hook."""
    from osr.train import train

    names: list[str] = []
    original = torch.nn.Module.__setattr__

    def counted(self, name, value):
        names.append(name)
        original(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counted)
    metrics, _ = train(train_cfg("model=baseline", "trainer.fast_dev_run=true"))
    assert "net" in names  # everything else still goes through nn.Module
    assert "_current_fx_name" not in names
    assert {"train/acc", "val/acc", "test/acc"} <= metrics.keys()
