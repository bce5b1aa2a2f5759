"""Two real gloo processes against one: DDP must not change a single figure."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_OVERRIDES, TINY_TRAINING, run_module

# odd sizes, so that the two ranks' shards of every set differ in length
UNEVEN = ["data.val_size=101", "data.test_limit=119", "ood.limit=59"]


def run_ok(module: str, *args: str) -> None:
    done = run_module(module, *args)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_ddp_training_evaluates_like_one_process(tiny_data: Path, tmp_path: Path):
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    sets = [f"paths.data_dir={tiny_data}", "ood.limit=59"]
    run_ok(
        "osr.train",
        "model=mlae",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={ddp}",
        *TINY_OVERRIDES,
        *TINY_TRAINING,
        *UNEVEN,
        *sets,
    )
    run_ok(
        "osr.evaluate",
        f"ckpt_path={ddp / 'checkpoints' / 'best.ckpt'}",
        f"hydra.run.dir={one}",
        "device=cpu",
        "report.tsne_points=60",
        *sets,
    )
    expected = json.loads((one / "metrics.json").read_text())
    got = json.loads((ddp / "metrics.json").read_text())
    assert expected["mnist.count"] == 119
    assert expected["ood.fashion_mnist.count"] == expected["ood.cifar10.count"] == 59
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert got[key] == value, key
    # the plots show the same images with the same labels and decisions (gathered outputs
    # are back in dataset order): compared by the arrays plotted, never by PNG bytes, which
    # follow matplotlib's version; t-SNE's output is left out, as its gradient sums follow the
    # thread count, but its input is compared
    with np.load(one / "plots" / "plotted.npz") as a, np.load(ddp / "plots" / "plotted.npz") as b:
        assert set(a.files) == set(b.files)
        assert {"confusion_matrix", "reconstructions.recon", "tsne.latents"} <= set(a.files)
        for key in sorted(set(a.files) - {"tsne.embedding"}):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
        assert a["tsne.embedding"].shape == b["tsne.embedding"].shape
    assert (ddp / "report.md").is_file()
