"""hparams_search=mlae_optuna: a real two-trial Optuna sweep through osr.train on tiny data."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_OVERRIDES, TINY_TRAINING, run_module

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper", reason='the sweep extra: pip install -e ".[sweep]"'
)


def sweep(tiny_data: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_module(
        "osr.train",
        "hparams_search=mlae_optuna",
        f"paths.data_dir={tiny_data}",
        f"hydra.sweep.dir={sweep_dir}",
        *[o for o in TINY_OVERRIDES if not o.startswith("report.")],
        *TINY_TRAINING,
        *overrides,
    )


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_and_reports_the_best(tiny_data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = sweep(
        tiny_data,
        sweep_dir,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = {}
    for job in sorted(sweep_dir.glob("[0-9]")):
        overrides = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
        params = dict(o.split("=", 1) for o in overrides if not o.startswith(("paths.", "data.")))
        record = json.loads((job / "thresholds.json").read_text())
        trials[job.name] = (params, record["validation"]["open_set_accuracy"])
        assert not (job / "metrics.json").exists()  # selection never sees test or OOD data
    assert len(trials) == 2
    for params, _ in trials.values():
        assert 1e-4 <= float(params["model.optimizer.lr"]) <= 1e-2
        assert 0.1 <= float(params["model.rec_weight"]) <= 10.0
        assert int(params["model.autoencoder.latent_dim"]) in (8, 16, 32, 64)
    assert trials["0"][0]["model.optimizer.lr"] != trials["1"][0]["model.optimizer.lr"]
    best_job = max(trials, key=lambda name: trials[name][1])
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(trials[best_job][1])
    best_params = trials[best_job][0]
    assert result["best_params"]["model.autoencoder.latent_dim"] == int(
        best_params["model.autoencoder.latent_dim"]
    )
    assert math.isclose(
        result["best_params"]["model.optimizer.lr"], float(best_params["model.optimizer.lr"])
    )


@pytest.mark.slow
def test_an_objective_the_run_does_not_produce_is_named(tiny_data, tmp_path):
    done = sweep(
        tiny_data, tmp_path / "sweep", "hydra.sweeper.n_trials=1", "optimized_metric=val/nope"
    )
    assert done.returncode != 0
    assert "optimized_metric=val/nope was not produced by this run" in done.stderr
    assert "calib/val_open_set_accuracy" in done.stderr
