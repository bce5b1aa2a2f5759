import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from osr.train import train
from tests.conftest import TINY_OVERRIDES, run_module

# 300 training images in batches of 32: 10 steps per epoch
RESUME_RUN = [
    "model=mlae",
    "trainer.max_epochs=3",
    "callbacks.last_checkpoint.every_n_train_steps=3",
    "report.tsne_points=0",
]


def run_train(data_dir: Path, run_dir: Path | None, *overrides: str) -> subprocess.CompletedProcess:
    base = [o for o in TINY_OVERRIDES if not o.startswith("report.")]
    where = [f"hydra.run.dir={run_dir}"] if run_dir else []
    return run_module("osr.train", f"paths.data_dir={data_dir}", *where, *base, *overrides)


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [17, 21], ids=["mid-epoch", "epoch-start"])
def test_killed_run_resumes_to_the_same_metrics(tiny_data, tmp_path, kill_step):
    reference = run_train(tiny_data, tmp_path / "reference", *RESUME_RUN)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = run_train(
        tiny_data,
        tmp_path / "killed",
        *RESUME_RUN,
        "+callbacks.kill._target_=tests.helpers.KillAtStep",
        f"+callbacks.kill.step={kill_step}",
    )
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    saved_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 < saved_at < kill_step  # a checkpoint from before the crash, not an epoch end
    assert not (tmp_path / "killed" / "metrics.json").exists()

    overrides = (tmp_path / "killed" / ".hydra" / "overrides.yaml").read_text()
    resumed = run_train(tiny_data, None, *RESUME_RUN, f"ckpt_path={last}")  # in its own run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run directory {tmp_path / 'killed'}" in resumed.stdout + resumed.stderr
    assert (tmp_path / "killed" / ".hydra" / "overrides.yaml").read_text() == overrides
    (resumed_config,) = (tmp_path / "killed").glob(".hydra-resumed-*/overrides.yaml")
    assert "ckpt_path=" in resumed_config.read_text()
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    got = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (value if isinstance(value, list) else pytest.approx(value, abs=1e-6)), (
            key
        )
    final = torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)
    reference_final = torch.load(tmp_path / "reference/checkpoints/last.ckpt", weights_only=True)
    assert final["global_step"] == reference_final["global_step"] == 30
    for name, tensor in reference_final["state_dict"].items():
        assert torch.allclose(final["state_dict"][name], tensor, atol=1e-6), name


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(train_cfg, tmp_path):
    def metrics(seed: int, name: str) -> dict:
        cfg = train_cfg("model=baseline", "trainer.max_epochs=1", f"seed={seed}")
        cfg.paths.output_dir = str(tmp_path / name)
        train(cfg)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    first, again, other = metrics(7, "a"), metrics(7, "b"), metrics(8, "c")
    assert first == again
    assert first != other


def test_atomic_write_never_leaves_a_truncated_file(tmp_path):
    from osr.io import atomic_write, write_json

    target = write_json(tmp_path / "metrics.json", {"a": 1})

    def crash(f):
        f.write(b'{"a": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert json.loads(target.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.slow
def test_wandb_api_key_never_lands_in_run_files(train_cfg, tmp_path, monkeypatch):
    from osr.wandb_setup import finish_wandb

    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        train(train_cfg("model=baseline", "logger=many_loggers", "trainer.max_epochs=1"))
    finally:
        finish_wandb()
    run = tmp_path / "run"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and (run / "report.md").is_file()
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
