"""Data resident on an accelerator: moved once, indexed where it lives, large eval batches.

No accelerator here: the meta device stands in for one, so the placement logic runs for real
while no kernel does.
"""

import pytest
import torch

from osr.utils.errors import OSRError
from tests.test_data import mnist

META = torch.device("meta")


def test_sampler_makes_its_indices_on_the_data_device():
    from osr.data.sampling import ShardedBatchSampler

    batches = list(ShardedBatchSampler(10, 4, shuffle=True, seed=1, device=META))
    assert [b.device for b in batches] == [META] * 3
    assert [len(b) for b in batches] == [4, 4, 2]


def test_resident_splits_move_once_and_batch_on_the_device(tiny_data, monkeypatch):
    dm = mnist(tiny_data, batch_size=32, eval_batch_size=16, device_eval_batch_size=64)
    monkeypatch.setattr(dm, "_data_device", lambda: META)
    val = dm.test_dataloader()  # 120 images: more than one accelerator batch
    for split in (dm.train_set, dm.val_set, dm.calibration_set, dm.test_set):
        assert [t.device for t in split.tensors] == [META, META]
        assert split.tensors[0].dtype == torch.uint8
    images, labels = next(iter(val))
    assert images.device == labels.device == META
    assert len(labels) == 64  # the accelerator's evaluation batch, not eval_batch_size
    images, labels = next(iter(dm.train_dataloader()))
    assert images.device == META and len(labels) == 32
    moved = dm.train_set
    dm.test_dataloader()
    assert dm.train_set is moved  # moved once, not per loader


def test_on_cpu_batches_stay_on_the_cpu_in_eval_batches(tiny_data):
    dm = mnist(tiny_data, eval_batch_size=16, device_eval_batch_size=64, on_device=True)
    images, labels = next(iter(dm.val_dataloader()))
    assert images.device.type == "cpu" and len(labels) == 16


def test_bad_on_device_value_is_named(tiny_data):
    with pytest.raises(OSRError, match="data.on_device='sometimes': use true, false or auto"):
        mnist(tiny_data, on_device="sometimes")


def test_drop_last_gives_every_training_batch_one_shape():
    from osr.data.sampling import ShardedBatchSampler

    kept = ShardedBatchSampler(10, 4, shuffle=True, seed=1, drop_last=True)
    assert [len(b) for b in kept] == [4, 4] and len(kept) == 2
    kept.skip = 1  # a resumed epoch still stops before the short batch
    assert [len(b) for b in kept] == [4]
    assert [len(b) for b in ShardedBatchSampler(10, 4, shuffle=True, seed=1)] == [4, 4, 2]
