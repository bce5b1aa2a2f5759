import json
import os

import numpy as np
import pytest
import yaml

from osr.evaluate import evaluate_checkpoint
from osr.summarize import summarize
from osr.train import train
from tests.conftest import TINY_OVERRIDES, TINY_TRAINING, run_module

SCORES = ("recon_l2", "binary_diff", "msp", "max_logit", "energy")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def contract_keys(sets: list[str], scores: tuple[str, ...]) -> list[str]:
    keys = [
        "closed_set.accuracy",
        "open_set.accuracy",
        "open_set.binary_accuracy",
        "open_set.macro_f1",
        "known_rejection_rate",
    ]
    keys += [f"thresholds.{s}" for s in scores]
    for name in sets:
        keys.append(f"ood.{name}.rejection_rate")
        keys += [
            f"ood.{name}.scores.{s}.{m}"
            for s in scores
            for m in ("auroc", "aupr_in", "aupr_out", "fpr95")
        ]
    return keys


def test_run_directory_holds_contract_metrics_report_and_plots(train_cfg, tmp_path):
    train(train_cfg("model=mlae", *TINY_TRAINING))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in contract_keys(["fashion_mnist", "cifar10"], SCORES):
        assert key in metrics, key
        if not key.startswith("thresholds."):
            assert 0.0 <= metrics[key] <= 1.0, key
    cm = np.array(metrics["open_set.confusion_matrix"])
    assert cm.shape == (11, 11) and cm.sum() == 120 + 120 + 60  # known test + both OOD sets
    assert cm[:10].sum() == 120 and cm[10].sum() == 180
    report = (run / "report.md").read_text()
    assert "closed_set.accuracy" in report and "| fashion_mnist | `recon_l2` |" in report
    expected = [
        "confusion_matrix",
        "scores_recon_l2",
        "scores_binary_diff",
        "training_curves",
        "reconstructions",
        "tsne",
    ]
    for name in expected:
        png = run / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000, name
        assert f"plots/{name}.png" in report


@pytest.mark.slow
def test_a_trained_model_separates_the_ood_sets_from_the_known_digits(train_cfg, tmp_path):
    """Three real epochs: every sign between the scores and metrics.json must be right."""
    train(train_cfg("model=mlae", "trainer.max_epochs=3", "report.tsne_points=0"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["known_rejection_rate"] <= 0.1
    for name in ("fashion_mnist", "cifar10"):
        assert metrics[f"ood.{name}.rejection_rate"] >= metrics["known_rejection_rate"] + 0.8
        voting = f"ood.{name}.scores.recon_l2"
        for key in ("auroc", "aupr_in", "aupr_out"):
            assert metrics[f"{voting}.{key}"] >= 0.9, (voting, key)
        assert metrics[f"{voting}.fpr95"] <= 0.2, voting
        for score in ("max_logit", "energy"):  # three epochs: the classifier is less sure
            assert metrics[f"ood.{name}.scores.{score}.auroc"] >= 0.8, (name, score)
    assert metrics["open_set.binary_accuracy"] >= 0.9


def test_held_out_digits_become_the_mnist_unknown_set(train_cfg, tmp_path):
    train(train_cfg("model=baseline", "data.known_classes=[2,4,5,9,8,3]", *TINY_TRAINING))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in contract_keys(
        ["mnist_unknown", "fashion_mnist", "cifar10"], ("msp", "max_logit", "energy")
    ):
        assert key in metrics, key
    assert np.array(metrics["open_set.confusion_matrix"]).shape == (7, 7)
    assert metrics["ood.mnist_unknown.count"] == 48  # 4 of 10 digits of 120 test images


def test_evaluate_checkpoint_reproduces_the_runs_metrics(train_cfg, evaluate_cfg, tmp_path):
    train(train_cfg("model=mlae", *TINY_TRAINING))
    at_train = json.loads((tmp_path / "run" / "metrics.json").read_text())
    again = evaluate_checkpoint(evaluate_cfg(tmp_path / "run" / "checkpoints" / "best.ckpt"))
    for key, value in at_train.items():
        if isinstance(value, list):
            assert again[key] == value, key
        else:
            assert again[key] == pytest.approx(value, abs=1e-6), key
    assert (tmp_path / "evaluation" / "report.md").is_file()
    own = evaluate_checkpoint(
        evaluate_cfg(tmp_path / "run" / "checkpoints" / "best.ckpt", "ood.normalization=own")
    )
    assert own["ood.cifar10.scores.recon_l2.auroc"] != at_train["ood.cifar10.scores.recon_l2.auroc"]


def test_wandb_runs_offline_and_records_our_metrics(train_cfg, tmp_path, monkeypatch):
    from osr.wandb_setup import finish_wandb, prepare_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    prepare_wandb()
    assert os.environ["WANDB_MODE"] == "offline"
    try:
        train(train_cfg("model=baseline", "logger=wandb", *TINY_TRAINING))
    finally:
        finish_wandb()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    for key in (
        b"open_set.accuracy",
        b"calib/msp",
        b"val/acc",
        b"eval/separation",
        b"voting_scores",
    ):
        assert key in data, key


def test_summarize_a_real_two_seed_sweep(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("report.")]
    done = run_module(
        "osr.train",
        "-m",
        "model=baseline",
        "seed=1,2",
        "calibration.k=2.0,3.0",
        f"paths.data_dir={tiny_data}",
        f"hydra.sweep.dir={sweep}",
        *overrides,
        *TINY_TRAINING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs: dict[str, list[dict]] = {"calibration.k=2.0": [], "calibration.k=3.0": []}
    for job in sorted(sweep.glob("[0-9]")):
        k = next(
            o for o in yaml.safe_load((job / ".hydra/overrides.yaml").read_text()) if "k=" in o
        )
        jobs[k].append(json.loads((job / "metrics.json").read_text()))
    md, csv_path = summarize(sweep)
    rows = {
        (r[0], r[2]): r for r in (line.split(",") for line in csv_path.read_text().splitlines()[1:])
    }
    for config, runs in jobs.items():
        assert len(runs) == 2
        for key in ("open_set.accuracy", "known_rejection_rate", "ood.cifar10.scores.msp.auroc"):
            values = [run[key] for run in runs]
            _, seeds, _, mean, std = rows[(config, key)]
            assert seeds == "2"
            assert float(mean) == pytest.approx(np.mean(values))
            assert float(std) == pytest.approx(np.std(values, ddof=1))
    text = md.read_text()
    assert "calibration.k=2.0 (n=2)" in text and "`model=baseline`" in text
