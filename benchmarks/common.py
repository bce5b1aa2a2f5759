"""Shared helpers for the benchmark scripts: timing, machine facts, result files."""

import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from osr.reporting.run_record import cpu_name
from osr.utils.config import CONFIG_DIR

# where the scripts write their result files; the smoke tests point it at a temporary folder
RESULTS = Path(os.environ.get("OSR_BENCHMARK_RESULTS", Path(__file__).resolve().parent / "results"))
MIRROR = Path(os.environ.get("OSR_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))


def timed(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def report(name: str, rows: list[tuple[str, float, float]], extra: dict[str, Any]) -> None:
    """Print ``(what, ours_s, reference_s)`` rows as a table and write them as JSON."""
    print(f"{'measurement':<44} {'osr (s)':>10} {'notebook (s)':>13} {'speed-up':>9}")
    for what, ours, ref in rows:
        print(f"{what:<44} {ours:>10.3f} {ref:>13.3f} {ref / ours:>8.1f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    data = {
        "machine": machine(),
        "rows": [{"what": w, "osr_s": o, "notebook_s": r, "speedup": r / o} for w, o, r in rows],
        **extra,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"written to {out}")


def offline_config(*overrides: str) -> DictConfig:
    """The ``train`` config reading the offline mirror, nothing downloaded."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *overrides,
                f"paths.data_dir={MIRROR}",
                "data.download=false",
                "ood.sets.fashion_mnist.download=false",
                "ood.sets.cifar10.download=false",
            ],
        )
