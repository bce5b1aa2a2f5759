"""osr.summarize --markdown over a directory holding several sweeps (one per objective)."""

import json
from pathlib import Path

import numpy as np
import yaml

from osr.summarize import markdown

RNG = np.random.default_rng(0)


def write_sweep(root: Path, objective: str, aurocs: dict[str, list[float]], commit: str) -> None:
    """A finished Hydra sweep over two splits: multirun.yaml, and per job its overrides,
    metrics.json and run.json."""
    task = [f"objective={objective}", "split=0,1"]
    sweep = root / objective
    sweep.mkdir(parents=True)
    config = {"hydra": {"job": {"name": "train"}, "overrides": {"task": task}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(config))
    for split in (0, 1):
        job = sweep / str(split)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"objective={objective}", f"split={split}"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        metrics = {"closed_set.accuracy": 0.99 - 0.01 * split, "mnist.count": 100}
        for name, values in aurocs.items():
            metrics[f"ood.mnist_unknown.scores.{name}.auroc"] = values[split]
            metrics[f"ood.mnist_unknown.scores.{name}.oscr"] = values[split] - RNG.uniform(0, 0.01)
        (job / "metrics.json").write_text(json.dumps(metrics))
        run = {"started": f"2026-11-30 0{split}:00:00 UTC", "finished": "2026-11-30 03:00:00 UTC"}
        run |= {"seconds": 60.0 * (split + 2), "machine": "m", "commit": commit, "torch": "t"}
        (job / "run.json").write_text(json.dumps(run))


def test_markdown_compares_the_best_detector_of_every_sweep_below_a_directory(tmp_path):
    write_sweep(tmp_path, "ce", {"knn": [0.90, 0.92], "msp": [0.95, 0.80]}, "aaa")
    write_sweep(tmp_path, "arpl", {"knn": [0.97, 0.95], "msp": [0.93, 0.90]}, "bbb")
    section = markdown(tmp_path, ("split",))

    assert "- command: `python -m osr.train -m objective=ce split=0,1`" in section
    assert "- command: `python -m osr.train -m objective=arpl split=0,1`" in section
    assert "- commit: aaa, bbb" in section
    table = section.split("the best detector of each configuration")[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| objective=")]
    assert [row.split(" | ")[0] for row in rows] == ["| objective=arpl", "| objective=ce"]
    # ce: msp's mean AUROC (87.5) is below knn's (91.0) though msp wins split 0
    metrics = [json.loads((tmp_path / "ce" / s / "metrics.json").read_text()) for s in "01"]
    oscr = [100 * m["ood.mnist_unknown.scores.knn.oscr"] for m in metrics]
    cells = rows[1].split(" | ")
    assert cells[1:6] == [
        "2",
        "98.50 ± 0.71",
        "`knn`",
        "91.00 ± 1.41",
        f"{np.mean(oscr):.2f} ± {np.std(oscr, ddof=1):.2f}",
    ]
    assert cells[6] == "2.5 ± 0.7 |"
    assert "### objective=ce" in section and "### objective=arpl" in section


def test_an_evaluate_sweep_over_added_splits_is_summarized_by_split(tmp_path):
    """``osr.evaluate -m +split=0,1 'ckpt_path=.../${split}/...'`` (an ensemble over splits):
    the jobs are replicates of one configuration, shown with the paths as typed."""
    sweep = tmp_path / "ensemble"
    for split in (0, 1):
        job = sweep / str(split)
        (job / ".hydra").mkdir(parents=True)
        # as Hydra writes them: the interpolation escaped
        overrides = [f"+split={split}", "ckpt_path=runs/$\\{split\\}/best.ckpt"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        auroc = {"ood.mnist_unknown.scores.knn.auroc": 0.9 + 0.01 * split}
        metrics = {"closed_set.accuracy": 0.99, **auroc}
        (job / "metrics.json").write_text(json.dumps(metrics))
    section = markdown(sweep, ("split",))
    assert "2 runs (+split=0, +split=1)" in section
    assert "`ckpt_path=runs/${split}/best.ckpt`" in section


def test_each_configuration_shows_the_decision_at_its_thresholds(tmp_path):
    """The notebook's headline figures per run and their mean ± std: known vs unknown and
    11-class accuracy, macro-F1, and the share of known and of each OOD set rejected."""
    write_sweep(tmp_path, "ce", {"knn": [0.90, 0.92]}, "aaa")
    figures = {
        "open_set.binary_accuracy": (0.991, 0.995),
        "open_set.accuracy": (0.987, 0.990),
        "open_set.macro_f1": (0.95, 0.97),
        "known_rejection_rate": (0.004, 0.008),
        "ood.mnist_unknown.rejection_rate": (0.97, 0.99),
    }
    for split in (0, 1):
        path = tmp_path / "ce" / str(split) / "metrics.json"
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps(metrics | {k: v[split] for k, v in figures.items()}))
    section = markdown(tmp_path / "ce", ("split",))
    for label, key in (
        ("known vs unknown accuracy", "open_set.binary_accuracy"),
        ("open-set accuracy, K + 1 classes", "open_set.accuracy"),
        ("open-set macro-F1", "open_set.macro_f1"),
        ("known test images rejected", "known_rejection_rate"),
        ("mnist_unknown rejected", "ood.mnist_unknown.rejection_rate"),
    ):
        values = [100 * v for v in figures[key]]
        row = f"| {label} (%) | {np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} | "
        assert row + f"{values[0]:.2f}, {values[1]:.2f} |" in section, label
