"""python -m osr.summarize <sweep dir>: one row per configuration, mean ± std over seeds.

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
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from osr.utils.io import write_text

REPLICATE_KEYS = ("seed",)


def configuration_overrides(overrides: list[str], replicates: tuple[str, ...]) -> frozenset[str]:
    return frozenset(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replicates)


def collect(
    sweep_dir: Path, replicates: tuple[str, ...] = REPLICATE_KEYS
) -> tuple[dict[str, list[dict[str, float]]], list[str]]:
    """Scalar metrics of every finished job grouped by configuration, and the overrides
    shared by all jobs."""
    jobs = []
    for metrics_file in sorted(sweep_dir.rglob("metrics.json")):
        overrides_file = metrics_file.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        metrics = json.loads(metrics_file.read_text())
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        jobs.append((configuration_overrides(overrides or [], replicates), scalars))
    shared = frozenset.intersection(*(o for o, _ in jobs)) if jobs else frozenset()
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for overrides, scalars in jobs:
        groups[" ".join(sorted(overrides - shared)) or "(all jobs)"].append(scalars)
    return dict(groups), sorted(shared)


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
        raise SystemExit(
            f"error: no metrics.json below {sweep_dir}; pass a sweep directory such as "
            "outputs/multirun/<date>/<time> whose jobs have finished."
        )
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    parser.add_argument(
        "--replicates",
        nargs="+",
        default=list(REPLICATE_KEYS),
        help="override keys whose values are replicates of one configuration (default: seed)",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir} is not a directory; pass outputs/multirun/<date>/<time>")
    md, csv_path = summarize(args.sweep_dir, tuple(args.replicates))
    print(md.read_text())
    print(f"written {md} and {csv_path}")


if __name__ == "__main__":
    main()
