"""python -m osr.summarize <sweep dir>: one row per configuration, mean ± std over seeds.

With ``--markdown`` it prints a results section instead (what was run, when, where, from
which commit; with several configurations a table of each one's best detector; per
configuration the closed-set accuracy, minutes per run and every detector's AUROC and OSCR
per OOD set): the tables of ``docs/`` are made this way, e.g.
``python -m osr.summarize outputs/multirun/osr_split_cifar10 --replicates split --markdown``.
A directory holding several sweeps (``outputs/multirun/objectives/<objective>``) is read
as one, each sweep's command listed.

Reads every job's ``metrics.json`` and ``.hydra/overrides.yaml`` below the sweep directory;
a configuration is a job's overrides other than the replicate keys (``seed``; add
``--replicates seed ckpt_path`` for an ``osr.evaluate`` sweep over the checkpoints of
several seeds), named by those that differ between jobs (the ones all jobs share are
listed once). The std is the sample standard deviation over seeds (ddof=1; 0 with a single
seed).
"""

import argparse
import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from osr.reporting.results_table import (
    Job,
    comparison,
    configuration_section,
    load_jobs,
    provenance,
)
from osr.utils.io import write_text

REPLICATE_KEYS = ("seed",)
NO_JOBS = "pass a sweep directory such as outputs/multirun/<date>/<time> whose jobs have finished."


def configuration_overrides(overrides: list[str], replicates: tuple[str, ...]) -> frozenset[str]:
    return frozenset(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replicates)


def group_jobs(
    jobs: list[Job], replicates: tuple[str, ...]
) -> tuple[dict[str, list[Job]], list[str]]:
    """Jobs grouped by configuration (their overrides other than ``replicates``, less those
    all jobs share), and the shared overrides."""
    keys = [configuration_overrides(job["overrides"], replicates) for job in jobs]
    shared = frozenset.intersection(*keys) if keys else frozenset()
    groups: dict[str, list[Job]] = defaultdict(list)
    for key, job in zip(keys, jobs, strict=True):
        groups[" ".join(sorted(key - shared)) or "(all jobs)"].append(job)
    return dict(groups), sorted(shared)


def collect(
    sweep_dir: Path, replicates: tuple[str, ...] = REPLICATE_KEYS
) -> tuple[dict[str, list[dict[str, float]]], list[str]]:
    """Scalar metrics of every finished job grouped by configuration, and the overrides
    shared by all jobs."""
    groups, shared = group_jobs(load_jobs(sweep_dir), replicates)
    scalars = {
        name: [
            {k: float(v) for k, v in job["metrics"].items() if isinstance(v, int | float)}
            for job in jobs
        ]
        for name, jobs in groups.items()
    }
    return scalars, shared


def aggregate(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    keys = sorted(set().union(*runs))
    out = {}
    for key in keys:
        values = [r[key] for r in runs if key in r and not math.isnan(r[key])]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key] = (statistics.fmean(values), std)
    return out


def summarize(sweep_dir: Path, replicates: tuple[str, ...] = REPLICATE_KEYS) -> tuple[Path, Path]:
    groups, shared = collect(sweep_dir, replicates)
    if not groups:
        raise SystemExit(f"error: no metrics.json below {sweep_dir}; {NO_JOBS}")
    stats = {name: aggregate(runs) for name, runs in groups.items()}
    metric_keys = sorted(set().union(*(s.keys() for s in stats.values())))

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["configuration", "seeds", "metric", "mean", "std"])
    for name, s in stats.items():
        for key in metric_keys:
            if key in s:
                writer.writerow([name, len(groups[name]), key, *s[key]])
    csv_path = write_text(sweep_dir / "summary.csv", buffer.getvalue())

    lines = [f"# Sweep summary: {sweep_dir}", "", "mean ± std over seeds (sample std)", ""]
    if shared:
        lines += ["Overrides shared by every job: " + " ".join(f"`{o}`" for o in shared), ""]
    lines.append("| metric | " + " | ".join(f"{n} (n={len(groups[n])})" for n in stats) + " |")
    lines.append("|---|" + "---|" * len(stats))
    for key in metric_keys:
        cells = [f"{s[key][0]:.4f} ± {s[key][1]:.4f}" if key in s else "–" for s in stats.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    md_path = write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return md_path, csv_path


def markdown(sweep_dir: Path, replicates: tuple[str, ...]) -> str:
    """The sweep's results section (see the module's docstring)."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise SystemExit(f"error: no metrics.json below {sweep_dir}; {NO_JOBS}")
    groups, shared = group_jobs(jobs, replicates)
    generated = " ".join(["python -m osr.summarize", str(sweep_dir), "--replicates", *replicates])
    lines = [f"<!-- generated by `{generated} --markdown` -->", "", *provenance(sweep_dir, jobs)]
    if shared:
        lines.append("- shared overrides: " + " ".join(f"`{o}`" for o in shared))
    lines.append("")
    if len(groups) > 1:
        lines += comparison(groups)
    for name, members in groups.items():
        title = sweep_dir.name if len(groups) == 1 else name  # one configuration: the sweep's
        lines += configuration_section(title, members, replicates)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    parser.add_argument(
        "--replicates",
        nargs="+",
        default=list(REPLICATE_KEYS),
        help="override keys whose values are replicates of one configuration (default: seed)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print a results section (provenance, accuracy, time, AUROC and OSCR per detector)",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir} is not a directory; pass outputs/multirun/<date>/<time>")
    if args.markdown:
        print(markdown(args.sweep_dir, tuple(args.replicates)))
        return
    md, csv_path = summarize(args.sweep_dir, tuple(args.replicates))
    print(md.read_text())
    print(f"written {md} and {csv_path}")


if __name__ == "__main__":
    main()
