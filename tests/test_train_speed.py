"""Issue 37's guard: osr.train records the seconds of each phase in run.json and logs them,
and ``benchmarks.train_speed`` runs on tiny settings and reports every figure."""

import json
import logging
from pathlib import Path

import pytest

from osr.train import train
from osr.utils import phases
from osr.utils.phases import phase, recording
from tests.conftest import TINY_OVERRIDES, TINY_TRAINING, run_module

# every phase of a default osr.train run: one going missing fails these tests
PHASES = (
    "data_setup",
    "fit",
    "checkpoint_reload",
    "calibration",
    "detector_fitting",
    "closed_set_test",
    "ood_evaluation",
    "report",
)


class Clock:
    """A ``time.perf_counter`` that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(phases.time, "perf_counter", clock)
    return clock


def test_nested_phase_counts_once_and_repeats_add_up(clock: Clock) -> None:
    @phase("inner")
    def work(seconds: float) -> None:
        clock.now += seconds

    with recording() as times:
        with phase("outer"):
            clock.now += 1.0
            work(2.0)
        work(0.5)
    assert times.seconds == {"outer": 1.0, "inner": 2.5}


def test_phase_outside_a_recording_does_nothing(clock: Clock, caplog) -> None:
    with caplog.at_level(logging.INFO), phase("fit"):
        clock.now += 1.0
    with recording() as times:
        pass
    assert times.seconds == {}
    assert not caplog.records


@pytest.mark.slow
def test_run_json_holds_every_phase(train_cfg, caplog) -> None:
    cfg = train_cfg(*TINY_TRAINING, "report.tsne_points=0")
    with caplog.at_level(logging.INFO, logger="osr.utils.phases"):
        train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert set(PHASES) <= set(record["phases"])
    assert all(record["phases"][name] > 0 for name in PHASES), record["phases"]
    assert sum(record["phases"].values()) <= record["seconds"] + 0.1
    logged = {r.getMessage().split(":")[0] for r in caplog.records}
    assert set(PHASES) <= logged  # each phase says when it starts and ends


@pytest.mark.slow
def test_train_speed_benchmark_smoke(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OSR_BENCHMARK_RESULTS", str(tmp_path))
    done = run_module(
        "benchmarks.train_speed",
        *("--steps", "2", "--warmup", "1", "--rounds", "1"),
        f"paths.data_dir={tiny_data}",
        *TINY_OVERRIDES,
        *TINY_TRAINING,
        "report.tsne_points=0",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out,) = tmp_path.glob("train_speed_*.json")
    result = json.loads(out.read_text())
    assert result["throughput"]["trainer_vs_hand"] > 0
    assert {"cpu", "cores", "torch", "bf16"} <= set(result["machine"])
    assert {"sha", "dirty"} <= set(result["commit"])
    seconds = result["phases"]["seconds"]
    assert all(seconds.get(name, 0) > 0 for name in PHASES), seconds


@pytest.mark.slow
def test_train_speed_benchmark_baseline(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OSR_BENCHMARK_RESULTS", str(tmp_path))
    done = run_module(
        "benchmarks.train_speed",
        *("--model", "baseline", "--steps", "2", "--warmup", "1", "--rounds", "1", "--no-phases"),
        f"paths.data_dir={tiny_data}",
        *TINY_OVERRIDES,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out,) = tmp_path.glob("train_speed_*.json")
    assert json.loads(out.read_text())["throughput"]["trainer_vs_hand"] > 0
