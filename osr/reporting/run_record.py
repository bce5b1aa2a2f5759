"""``run.json``: when, where and from which code a run was made, so that a results table
generated from a sweep (``osr.summarize --markdown``) can say so."""

import functools
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from osr.utils.config import ROOT_DIR
from osr.utils.io import write_json

RUN_RECORD = "run.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The machine in words: CPU, cores, memory, GPU if any."""
    words = f"{cpu_name()}, {os.cpu_count()} cores"
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        words += f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        words += f", {torch.cuda.get_device_name()}"
    return words


@functools.cache
def commit() -> str:
    """The repository's commit, ``+dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout. Asked once per process (``osr.train`` asks when a run starts):
    a multirun's jobs all run the code imported at its start, whatever the checkout holds
    by the time a later job ends."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT_DIR, capture_output=True, text=True, timeout=10
        )
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def command() -> str:
    """The command that started this run: ``python -m osr.<entry point>`` and the overrides of
    this job (in a multirun, its own values, e.g. ``split=2``)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        return " ".join([f"python -m osr.{hydra_cfg.job.name}", *hydra_cfg.overrides.task])
    return " ".join(["python -m osr." + Path(sys.argv[0]).stem, *sys.argv[1:]])


def write_run_record(
    run_dir: str | Path, started: float, phases: Mapping[str, float] | None = None, **more: Any
) -> Path:
    """Write ``run.json``: command, start and end (UTC), seconds, commit, machine, torch, and
    ``phases``: the seconds of each phase of the run, nested phases not counted twice
    (``osr.utils.phases``), to the tenth of a millisecond."""
    now = time.time()
    iso = lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")  # noqa: E731
    record = {
        "command": command(),
        "started": iso(started),
        "finished": iso(now),
        "seconds": round(now - started, 1),
        "commit": commit(),
        "machine": machine(),
        "torch": torch.__version__,
        **more,
    }
    if phases is not None:
        record["phases"] = {name: round(seconds, 4) for name, seconds in phases.items()}
    return write_json(Path(run_dir) / RUN_RECORD, record)
