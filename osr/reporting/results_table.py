"""A sweep's results as a Markdown page section: what was run (command, dates, machine,
commit, from the jobs' ``run.json``), then per configuration the closed-set accuracy, the
time per job, and every detector's AUROC and OSCR on every OOD set, mean ± std over the
replicates (seeds or splits), detectors ranked by mean AUROC, and the known-rejection budget's
operating points."""

import json
import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from osr.reporting.run_record import RUN_RECORD

# "dir", "overrides", "metrics", "run" (run.json, or {}), "curve" (operating_curve.json, or None)
Job = dict[str, Any]


def _mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def _sweep_command(sweep_dir: Path) -> str | None:
    """``python -m osr.train -m <overrides>`` from Hydra's multirun.yaml, when present."""
    config = sweep_dir / "multirun.yaml"
    if not config.is_file():
        return None
    hydra_cfg = yaml.safe_load(config.read_text()).get("hydra", {})
    name = hydra_cfg.get("job", {}).get("name", "train")
    task = hydra_cfg.get("overrides", {}).get("task", [])
    return " ".join([f"python -m osr.{name} -m", *task])


def provenance(sweep_dir: Path, jobs: list[Job]) -> list[str]:
    """Lines saying what was run, when, where and from which commit: the command of every
    Hydra sweep among the jobs (``sweep_dir`` itself, or the sweeps below it)."""
    runs = [job["run"] for job in jobs if job["run"]]
    sweeps = sorted({job["dir"].parent for job in jobs} | {sweep_dir})
    commands = [c for c in map(_sweep_command, sweeps) if c]
    lines = [f"- command: `{command}`" for command in commands]
    if runs:
        started = min(r["started"] for r in runs)
        finished = max(r["finished"] for r in runs)
        lines.append(f"- date: {started} to {finished}")
        for key in ("machine", "commit", "torch"):
            values = sorted({str(r.get(key)) for r in runs})
            lines.append(f"- {key}: {', '.join(values)}")
    lines.append(f"- jobs: {len(jobs)} (`{sweep_dir}`), {len(runs)} with a run.json")
    return lines


def _ood_sets(metrics: dict[str, Any]) -> list[str]:
    return sorted({k.split(".")[1] for k in metrics if k.startswith("ood.") and ".scores." in k})


def _detectors(metrics: dict[str, Any], ood_set: str) -> list[str]:
    prefix = f"ood.{ood_set}.scores."
    return sorted({k[len(prefix) :].split(".")[0] for k in metrics if k.startswith(prefix)})


def _figures(metrics: list[dict[str, Any]], ood_set: str, detector: str, key: str) -> list[float]:
    full = f"ood.{ood_set}.scores.{detector}.{key}"
    return [m[full] for m in metrics if full in m]


def _ranked(metrics: list[dict[str, Any]], ood_set: str) -> list[str]:
    """The detectors of ``ood_set``, best mean AUROC first."""
    auroc = {d: _figures(metrics, ood_set, d, "auroc") for d in _detectors(metrics[0], ood_set)}
    return sorted(auroc, key=lambda d: -statistics.fmean(auroc[d]))


def _minutes(jobs: list[Job]) -> list[float]:
    return [job["run"]["seconds"] / 60 for job in jobs if job["run"]]


def comparison(groups: dict[str, list[Job]]) -> list[str]:
    """Per OOD set, one row per configuration: its best detector's AUROC and OSCR, beside
    the closed-set accuracy and the time per run; configurations ranked by that AUROC."""
    lines = []
    first = next(iter(groups.values()))[0]["metrics"]
    for ood_set in _ood_sets(first):
        rows = []
        for name, jobs in groups.items():
            metrics = [job["metrics"] for job in jobs]
            if not _detectors(metrics[0], ood_set):
                continue
            best = _ranked(metrics, ood_set)[0]
            auroc = _figures(metrics, ood_set, best, "auroc")
            cells = [
                name,
                str(len(jobs)),
                _mean_std([m["closed_set.accuracy"] for m in metrics]),
                f"`{best}`",
                _mean_std(auroc),
                _mean_std(_figures(metrics, ood_set, best, "oscr")),
                _mean_std(_minutes(jobs), 1.0, 1),
            ]
            rows.append((statistics.fmean(auroc), cells))
        lines += [
            f"**{ood_set}**: the best detector of each configuration (by mean AUROC), mean ± std",
            "",
            "| configuration | runs | closed-set accuracy (%) | best detector | AUROC (%) "
            "| OSCR (%) | minutes per run |",
            "|---|---|---|---|---|---|---|",
            *("| " + " | ".join(cells) + " |" for _, cells in sorted(rows, key=lambda r: -r[0])),
            "",
        ]
    return lines


def decision_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, metrics.json key): closed-set accuracy, then the open-set decision at the run's
    thresholds (the notebook's headline figures), then the share of each OOD set rejected."""
    rows = [
        ("closed-set accuracy", "closed_set.accuracy"),
        ("known vs unknown accuracy", "open_set.binary_accuracy"),
        ("open-set accuracy, K + 1 classes", "open_set.accuracy"),
        ("open-set macro-F1", "open_set.macro_f1"),
        ("known test images rejected", "known_rejection_rate"),
    ]
    return rows + [(f"{s} rejected", f"ood.{s}.rejection_rate") for s in _ood_sets(metrics)]


def configuration_section(name: str, jobs: list[Job], replicates: tuple[str, ...]) -> list[str]:
    """The closed-set accuracy, minutes per job and every detector's AUROC and OSCR."""

    def replicate(job: Job) -> str:
        pairs = [o for o in job["overrides"] if o.split("=", 1)[0].lstrip("+~") in replicates]
        return " ".join(pairs) or "-"

    metrics = [job["metrics"] for job in jobs]
    minutes = _minutes(jobs)
    per_job = ", ".join(replicate(job) for job in jobs)
    runs = f"{len(jobs)} run{'s' if len(jobs) > 1 else ''}"
    lines = [f"### {name}", "", f"{runs} ({per_job}); mean ± std (sample std).", ""]
    lines += ["| | mean ± std | per run |", "|---|---|---|"]
    for label, key in decision_rows(metrics[0]):
        if all(key in m for m in metrics):
            values = [m[key] for m in metrics]
            per_run = ", ".join(f"{100 * v:.2f}" for v in values)
            lines.append(f"| {label} (%) | {_mean_std(values)} | {per_run} |")
    if minutes:
        lines.append(
            f"| minutes per run | {_mean_std(minutes, 1.0, 1)} | "
            + ", ".join(f"{m:.1f}" for m in minutes)
            + " |"
        )

    ranked = {}
    for ood_set in _ood_sets(metrics[0]):
        values = partial(_figures, metrics, ood_set)
        detectors = _ranked(metrics, ood_set)
        ranked[ood_set] = detectors
        lines.append(
            f"| {detectors[0]} AUROC on {ood_set} (%) | {_mean_std(values(detectors[0], 'auroc'))}"
            " | " + ", ".join(f"{100 * v:.2f}" for v in values(detectors[0], "auroc")) + " |"
        )
    for ood_set, detectors in ranked.items():
        values = partial(_figures, metrics, ood_set)
        lines += ["", f"**{ood_set}**: detectors by mean AUROC", ""]
        lines += ["| detector | AUROC (%) | OSCR (%) | FPR95 (%) |", "|---|---|---|---|"]
        for d in detectors:
            lines.append(
                f"| `{d}` | {_mean_std(values(d, 'auroc'))} | {_mean_std(values(d, 'oscr'))} "
                f"| {_mean_std(values(d, 'fpr95'))} |"
            )
    return [*lines, "", *operating_points(jobs)]


def operating_points(jobs: list[Job]) -> list[str]:
    """The share of each set rejected at each alpha of the jobs' conformal operating curves
    (``operating_curve.json``), when every job has one for the same voting set."""
    curves = [job.get("curve") for job in jobs]
    if not all(curves) or len({tuple(c["voting_scores"]) for c in curves}) != 1:
        return []
    alphas = [row["alpha"] for row in curves[0]["rows"]]
    if not alphas:
        return []
    metrics = jobs[0]["metrics"]  # the known test split is the one counted as "<name>.count"
    known = next(k[: -len(".count")] for k in metrics if k.endswith(".count") and "." not in k[:-6])
    sets = [known, *sorted(set(curves[0]["rows"][0]["rejected"]) - {known})]
    voting = ", ".join(f"`{name}`" for name in curves[0]["voting_scores"])
    lines = [
        f"**Known-rejection budget** (`calibration=conformal`): images rejected by the union of "
        f"{voting} calibrated at each alpha on the images that set the thresholds "
        "(`operating_curve.json`; `thresholds.json` names their split); mean ± std, and per "
        "run for the known test split.",
        "",
        f"| alpha | {known} rejected (%) | per run | "
        + " | ".join(f"{name} rejected (%)" for name in sets[1:])
        + " |",
        "|---" * (len(sets) + 2) + "|",
    ]
    for i, alpha in enumerate(alphas):
        rows = [
            c["rows"][i] for c in curves if i < len(c["rows"]) and c["rows"][i]["alpha"] == alpha
        ]
        if len(rows) != len(curves):
            continue
        share = {name: [row["rejected"][name] for row in rows] for name in sets}
        lines.append(
            f"| {100 * alpha:.1f}% | {_mean_std(share[known])} | "
            + ", ".join(f"{100 * v:.2f}" for v in share[known])
            + " | "
            + " | ".join(_mean_std(share[name]) for name in sets[1:])
            + " |"
        )
    return [*lines, ""]


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every finished job below ``sweep_dir``: its overrides, metrics.json and run.json."""
    jobs = []
    for metrics_file in sorted(sweep_dir.rglob("metrics.json")):
        run_dir = metrics_file.parent
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        # Hydra writes an interpolation given on the command line escaped: ${split} as $\{split\}
        overrides = [o.replace("\\{", "{").replace("\\}", "}") for o in overrides or []]
        record, curve = run_dir / RUN_RECORD, run_dir / "operating_curve.json"
        jobs.append(
            {
                "dir": run_dir,
                "overrides": overrides,
                "metrics": json.loads(metrics_file.read_text()),
                "run": json.loads(record.read_text()) if record.is_file() else {},
                "curve": json.loads(curve.read_text()) if curve.is_file() else None,
            }
        )
    return jobs
