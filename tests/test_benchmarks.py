"""Every script of benchmarks/ runs on tiny settings (the tests' tiny data, a few batches), as a
user runs it (``python -m benchmarks.<name>``), so that a change of osr's defaults cannot
break one silently; results go to a temporary folder ($OSR_BENCHMARK_RESULTS), never over
benchmarks/results."""

import importlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import benchmarks.common
from osr.train import train
from osr.utils.config import CONFIG_DIR
from tests.conftest import TINY_TRAINING, run_module, tiny_overrides


@pytest.fixture
def bench(tiny_data: Path, tmp_path: Path, monkeypatch) -> Callable[..., tuple[str, Path]]:
    """``bench(script, *args)``: its stdout and the folder its results went to."""
    results = tmp_path / "results"
    monkeypatch.setenv("OSR_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("OSR_BENCHMARK_RESULTS", str(results))

    def run(script: str, *args: str) -> tuple[str, Path]:
        done = run_module(f"benchmarks.{script}", *args)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout, results

    return run


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``runs(name, *overrides)``: the directory of a tiny osr.train run, trained once for the
    module, as job 0 of a sweep directory (what score_combinations reads). Each is trained on
    a copy of the tiny data that is gone afterwards, as for a run brought from another
    machine: the scripts read the data from $OSR_DATA_DIR."""
    made: dict[str, Path] = {}

    def get(name: str, *overrides: str) -> Path:
        if name not in made:
            elsewhere = tmp_path_factory.mktemp("elsewhere") / "data"
            shutil.copytree(tiny_data, elsewhere)
            tiny = [o for o in tiny_overrides(*overrides) if not o.startswith("ood.sets.")]
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(
                    "train",
                    overrides=[f"paths.data_dir={elsewhere}", *tiny, *TINY_TRAINING, *overrides],
                )
            with open_dict(cfg):
                cfg.paths.output_dir = str(tmp_path_factory.mktemp(name) / "0")
            train(cfg)
            shutil.rmtree(elsewhere)
            made[name] = Path(cfg.paths.output_dir)
        return made[name]

    return get


def written(results: Path, name: str) -> dict:
    return json.loads((results / f"{name}.json").read_text())


@pytest.mark.slow
def test_training(bench):
    """The default voting sets name detectors beyond the built-in ones (baseline: gen)."""
    args = ("--smoke", "--batches", "3", "--rounds", "1", "--batch-sizes", "64")
    out, results = bench("training", *args, "--no-plain-lightning")
    models = written(results, "training")["models"]
    assert set(models) == {"baseline", "mlae"} and "mlae" in out
    assert all(
        m["osr_trainer_img_s"] > 0 and m["notebook_feeding_img_s"] > 0 for m in models.values()
    )


@pytest.mark.slow
def test_notebook(bench):
    out, results = bench("notebook", "--baseline-epochs", "1", "--mlae-epochs", "1")
    figures = written(results, "notebook")
    assert 0 <= figures["mlae_test_acc"] <= 1 and figures["total_s"] > 0
    assert "baseline_test_acc" in out


@pytest.mark.slow
def test_data(bench):
    out, _ = bench("data", "--val-size", "100")
    assert "one pass over 300 training images" in out
    assert "CIFAR-10 setup, 260 images" in out


@pytest.mark.slow
def test_detectors(bench, runs):
    best = runs("mlae", "model=mlae") / "checkpoints" / "best.ckpt"
    _, results = bench("detectors", "--ckpt", str(best), "--rounds", "1")
    result = written(results, "detectors")
    assert result["fitted"] and result["evaluation_default_s"] > 0


@pytest.mark.slow
def test_calibration(bench, runs):
    best = runs("mlae", "model=mlae") / "checkpoints" / "best.ckpt"
    out, results = bench("calibration", "--ckpt", str(best), "--val-size", "100")
    result = written(results, "calibration")
    assert len(result["rows"]) == 4 and set(result["thresholds_osr"]) == {"recon_l2", "binary_diff"}
    assert "Otsu binarization, 50 images" in out  # the calibration half of the 100 held out


@pytest.mark.slow
def test_calibration_with_random_weights(bench):
    _, results = bench("calibration", "--val-size", "100")
    assert written(results, "calibration")["thresholds_notebook"]["recon_l2"] > 0


@pytest.mark.slow
def test_voting_sets(bench, runs):
    run = runs("mlae", "model=mlae")
    candidates = ("--detectors", "recon_l2", "binary_diff", "max_logit", "energy")
    out, _ = bench("voting_sets", str(run), "--alpha", "0.1", "--outliers", "64", *candidates)
    assert "| binary_diff, max_logit, recon_l2 (configured) |" in out  # the default set


@pytest.mark.slow
def test_score_combinations(bench, runs):
    sweep = runs("osr_split", "experiment=osr_split").parent
    _, results = bench("score_combinations", str(sweep))
    aurocs = written(results, "score_combinations")["auroc"]
    assert all(len(values) == 1 and 0 <= values[0] <= 1 for values in aurocs.values())


@pytest.mark.slow
def test_end_to_end(bench):
    out, results = bench("end_to_end", "--smoke", "--seed", "1")
    result = written(results, "end_to_end")
    assert result["osr_s"]["total"] > 0 and result["notebook_s"]["mlae_training_s"] > 0
    assert "osr / notebook" in out


def test_common_helpers(tmp_path, monkeypatch, tiny_data):
    """timed, report and offline_config, which the scripts share, read their folders from
    the environment."""
    monkeypatch.setenv("OSR_BENCHMARK_RESULTS", str(tmp_path))
    monkeypatch.setenv("OSR_DATA_DIR", str(tiny_data))
    common = importlib.reload(benchmarks.common)
    try:
        assert common.timed(lambda: None, repeats=2) >= 0
        common.report("helpers", [("nothing", 1.0, 2.0)], {"note": "smoke"})
        assert written(tmp_path, "helpers")["rows"][0]["speedup"] == 2.0
        cfg = common.offline_config("model=baseline")
        assert cfg.paths.data_dir == str(tiny_data) and not cfg.data.download
    finally:
        monkeypatch.undo()
        importlib.reload(benchmarks.common)
