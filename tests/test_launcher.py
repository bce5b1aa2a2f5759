"""Sweep jobs through Hydra's submitit launcher (its local executor runs here as on a cluster)."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_OVERRIDES, TINY_TRAINING, run_module


@pytest.mark.slow
def test_two_job_multirun_through_submitit_local(tiny_data: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("report.")]
    done = run_module(
        "osr.train",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "model=baseline",
        "seed=1,2",
        f"paths.data_dir={tiny_data}",
        f"hydra.sweep.dir={sweep}",
        *overrides,
        *TINY_TRAINING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seeds = {}
    for job in ("0", "1"):
        run = sweep / job
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        seeds[config["seed"]] = json.loads((run / "metrics.json").read_text())
        assert (run / "checkpoints" / "best.ckpt").is_file()
    assert sorted(seeds) == [1, 2]
    assert seeds[1] != seeds[2]  # two jobs, two trainings, not one run written twice
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # each job ran as its own submitit job
