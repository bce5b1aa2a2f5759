import csv
import json
import math
import signal
import subprocess
from pathlib import Path

import numpy as np
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
@pytest.mark.parametrize(
    ("overrides", "saved_at"),
    [
        # last.ckpt from the step saves only: epoch 1 ends, and logs, after the checkpoint
        (["callbacks.model_checkpoint.save_last=false"], 18),
        # last.ckpt also at epoch 1's end, after its figures are computed but before they are
        # logged: Lightning does not repeat that epoch end on resume
        ([], 20),
    ],
    ids=["mid-epoch", "epoch-end"],
)
def test_killed_run_resumes_to_the_same_metrics(tiny_data, tmp_path, overrides, saved_at):
    reference = run_train(tiny_data, tmp_path / "reference", *RESUME_RUN, *overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = run_train(
        tiny_data,
        tmp_path / "killed",
        *RESUME_RUN,
        *overrides,
        "+callbacks.kill._target_=tests.helpers.KillAtStep",
        "+callbacks.kill.step=21",
    )
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == saved_at
    assert not (tmp_path / "killed" / "metrics.json").exists()

    hydra_overrides = (tmp_path / "killed" / ".hydra" / "overrides.yaml").read_text()
    resumed = run_train(tiny_data, None, *RESUME_RUN, *overrides, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run directory {tmp_path / 'killed'}" in resumed.stdout + resumed.stderr  # its own
    assert (tmp_path / "killed" / ".hydra" / "overrides.yaml").read_text() == hydra_overrides
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
        assert torch.allclose(final["state_dict"][name], tensor, atol=1e-6, equal_nan=True), name

    header, rows = read_csv(tmp_path / "killed" / "csv" / "metrics.csv")
    expected_header, expected_rows = read_csv(tmp_path / "reference" / "csv" / "metrics.csv")
    assert header == expected_header
    assert len(expected_rows) == 9  # val and train of 3 epochs, calibration, test, evaluation
    assert len(rows) == len(expected_rows)
    for row, expected_row in zip(rows, expected_rows, strict=True):
        assert row == pytest.approx(expected_row, abs=1e-6, nan_ok=True)

    # the training curves: EpochHistory in the final checkpoint, which the reference saved
    # before epoch 2 ended (a resumed run whose best.ckpt did not change has Lightning save
    # last.ckpt once more when training ends), and the plot drawn from all three epochs
    history = final["callbacks"]["EpochHistory"]["epochs"]
    expected_history = reference_final["callbacks"]["EpochHistory"]["epochs"]
    assert [e["epoch"] for e in expected_history] == [0, 1]
    assert len(history) >= len(expected_history)
    for epoch, expected_epoch in zip(history, expected_history, strict=False):
        assert epoch == pytest.approx(expected_epoch, abs=1e-6)
    # compared by the arrays plotted, not PNG bytes (those follow matplotlib's version)
    plotted = "plots/plotted.npz"
    with (
        np.load(tmp_path / "killed" / plotted) as got,
        np.load(tmp_path / "reference" / plotted) as ref,
    ):
        curves = [k for k in ref.files if k.startswith("training_curves.")]
        assert "training_curves.val/acc" in curves
        assert sorted(curves) == sorted(k for k in got.files if k.startswith("training_curves."))
        for key in curves:
            np.testing.assert_allclose(got[key], ref[key], atol=1e-6, err_msg=key)


def read_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    """The header and the rows of a metrics.csv, empty cells as NaN."""
    header, *rows = list(csv.reader(path.open()))
    return header, [[float(v) if v else math.nan for v in row] for row in rows]


# epochs cut to 4 of the 10 training batches, a step checkpoint at each epoch's last batch
CUT_SHORT_RUN = [
    "model=baseline",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=4",
    "callbacks.last_checkpoint.every_n_train_steps=4",
    "test=false",
    "evaluate=false",
]


def trained_batches(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_resume_after_a_cut_short_epoch_trains_the_next_epoch_in_full(tiny_data, tmp_path):
    def record(name: str) -> str:
        return f"+callbacks.batches.path={tmp_path / name}.jsonl"

    batches = "+callbacks.batches._target_=tests.helpers.BatchLabels"
    reference = run_train(tiny_data, tmp_path / "reference", *CUT_SHORT_RUN, batches, record("ref"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = run_train(
        tiny_data,
        tmp_path / "killed",
        *CUT_SHORT_RUN,
        batches,
        record("killed"),
        "+callbacks.kill._target_=tests.helpers.KillInValidation",
        "+callbacks.kill.step=4",
    )
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the step save, not val's

    resumed = run_train(
        tiny_data, None, *CUT_SHORT_RUN, batches, record("resumed"), f"ckpt_path={last}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = trained_batches(tmp_path / "ref.jsonl")
    assert [epoch for epoch, _ in expected] == [0] * 4 + [1] * 4 + [2] * 4
    assert trained_batches(tmp_path / "resumed.jsonl") == expected[4:]
    final = torch.load(last, weights_only=True)
    reference_final = torch.load(tmp_path / "reference/checkpoints/last.ckpt", weights_only=True)
    assert final["global_step"] == reference_final["global_step"] == 12
    for name, tensor in reference_final["state_dict"].items():
        assert torch.allclose(final["state_dict"][name], tensor, atol=1e-6, equal_nan=True), name
    # Lightning resumes this checkpoint in epoch 1 without epoch 0's end; epoch 1's training
    # figures must still be epoch 1's alone
    expected_rows = train_rows(tmp_path / "reference" / "csv" / "metrics.csv")
    assert [row["epoch"] for row in expected_rows] == [0, 1, 2]
    rows = train_rows(tmp_path / "killed" / "csv" / "metrics.csv")
    assert len(rows) == 2
    for row, expected_row in zip(rows, expected_rows[1:], strict=True):
        assert row == pytest.approx(expected_row, abs=1e-6)


def train_rows(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv that hold training figures, without their empty cells."""
    rows = csv.DictReader(path.open())
    return [{k: float(v) for k, v in row.items() if v} for row in rows if row["train/loss"]]


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
    from osr.utils.io import atomic_write, write_json

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
    from osr.utils.wandb_setup import finish_wandb

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
