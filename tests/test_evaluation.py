import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from osr.evaluate import evaluate_checkpoint
from osr.summarize import markdown, summarize
from osr.train import train
from tests.conftest import TINY_TRAINING, run_module, tiny_overrides
from tests.wandb_records import logged_config, logged_history

# detectors=default on the autoencoder-classifier (the baseline has no reconstruction)
SCORES = ("recon_l2", "binary_diff", "msp", "max_logit", "energy", "gen")
SCORES += ("mahalanobis", "rmd", "knn", "vim", "react")
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
            for m in ("auroc", "oscr", "aupr_in", "aupr_out", "fpr95")
        ]
    return keys


@pytest.mark.slow
def test_run_directory_holds_contract_metrics_report_and_plots(train_cfg, tmp_path):
    train(train_cfg("model=mlae", *TINY_TRAINING))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    contract = contract_keys(["fashion_mnist", "cifar10"], SCORES)
    counts = {"mnist.count": 120, "ood.fashion_mnist.count": 120, "ood.cifar10.count": 60}
    assert metrics.keys() == {*contract, *counts, "open_set.confusion_matrix"}
    # fractions, except the thresholds (each in its score's units) and the counts
    fitted = json.loads((run / "thresholds.json").read_text())["scores"]
    for key in contract:
        value = metrics[key]
        if key.startswith("thresholds."):
            assert value == pytest.approx(fitted[key.split(".", 1)[1]]["threshold"]), key
        else:
            assert isinstance(value, float) and 0.0 <= value <= 1.0, key
    assert metrics["thresholds.binary_diff"] > 1  # a number of pixels
    for key, count in counts.items():
        assert type(metrics[key]) is int and metrics[key] == count, key
    cm = np.array(metrics["open_set.confusion_matrix"])
    assert cm.shape == (11, 11) and cm.sum() == 120 + 120 + 60  # known test + both OOD sets
    assert cm[:10].sum() == 120 and cm[10].sum() == 180
    report = (run / "report.md").read_text()
    assert "closed_set.accuracy" in report and "| `recon_l2` | fashion_mnist |" in report
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    ranked = [line.split("`")[1] for line in rows if "| cifar10 |" in line]
    mean_auroc = {
        s: np.mean([metrics[f"ood.{o}.scores.{s}.auroc"] for o in ("fashion_mnist", "cifar10")])
        for s in SCORES
    }
    assert ranked == sorted(SCORES, key=lambda s: -mean_auroc[s])
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
    # the tiny runs' budget is alpha 0.1 on 50 calibration images: over 120 test digits the
    # realized rate scatters around it (its std about 0.03), and a wrong sign would reject most
    assert metrics["known_rejection_rate"] <= 0.2
    for name in ("fashion_mnist", "cifar10"):
        assert metrics[f"ood.{name}.rejection_rate"] >= metrics["known_rejection_rate"] + 0.8
        voting = f"ood.{name}.scores.recon_l2"
        for key in ("auroc", "aupr_in", "aupr_out"):
            assert metrics[f"{voting}.{key}"] >= 0.9, (voting, key)
        assert metrics[f"{voting}.fpr95"] <= 0.2, voting
        for score in ("max_logit", "energy"):  # three epochs: the classifier is less sure
            assert metrics[f"ood.{name}.scores.{score}.auroc"] >= 0.8, (name, score)
    assert metrics["open_set.binary_accuracy"] >= 0.9


@pytest.mark.slow
def test_held_out_digits_become_the_mnist_unknown_set(train_cfg, tmp_path):
    train(train_cfg("model=baseline", "data.known_classes=[2,4,5,9,8,3]", *TINY_TRAINING))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in contract_keys(
        ["mnist_unknown", "fashion_mnist", "cifar10"], ("msp", "max_logit", "energy")
    ):
        assert key in metrics, key
    assert np.array(metrics["open_set.confusion_matrix"]).shape == (7, 7)
    assert metrics["ood.mnist_unknown.count"] == 48  # 4 of 10 digits of 120 test images


def recompute_metrics(
    run: Path, known: str, thresholds: dict[str, float], voting: list[str]
) -> dict[str, object]:
    """metrics.json computed again from the run's scores.npz with numpy and sklearn alone."""
    saved = np.load(run / "scores.npz")
    sets = sorted({key.split(".")[0] for key in saved.files})
    assert known in sets
    unknown = saved[f"{known}.logits"].shape[1]
    for name in sets:  # the decisions follow the rule: any voting score above its threshold
        votes = np.stack([saved[f"{name}.scores.{s}"] > thresholds[s] for s in voting])
        expected = np.where(votes.any(0), unknown, saved[f"{name}.logits"].argmax(1))
        assert np.array_equal(saved[f"{name}.predictions"], expected), name
    labels = np.concatenate([saved[f"{name}.labels"] for name in sets])
    predictions = np.concatenate([saved[f"{name}.predictions"] for name in sets])
    known_labels, known_predictions = saved[f"{known}.labels"], saved[f"{known}.predictions"]
    metrics: dict[str, object] = {
        "closed_set.accuracy": np.mean(saved[f"{known}.logits"].argmax(1) == known_labels),
        "open_set.accuracy": np.mean(predictions == labels),
        "open_set.binary_accuracy": np.mean((predictions == unknown) == (labels == unknown)),
        "open_set.macro_f1": f1_score(labels, predictions, average="macro"),
        "known_rejection_rate": np.mean(known_predictions == unknown),
        "open_set.confusion_matrix": confusion_matrix(
            labels, predictions, labels=range(unknown + 1)
        ).tolist(),
        f"{known}.count": len(known_labels),
    }
    metrics.update({f"thresholds.{s}": t for s, t in thresholds.items()})
    for name in sets:
        if name == known:
            continue
        metrics[f"ood.{name}.rejection_rate"] = np.mean(saved[f"{name}.predictions"] == unknown)
        metrics[f"ood.{name}.count"] = len(saved[f"{name}.labels"])
        for score in thresholds:
            values = np.concatenate(
                [saved[f"{known}.scores.{score}"], saved[f"{name}.scores.{score}"]]
            )
            is_ood = np.repeat([0, 1], [len(known_labels), len(saved[f"{name}.labels"])])
            fpr, tpr, _ = roc_curve(1 - is_ood, -values)
            prefix = f"ood.{name}.scores.{score}"
            metrics[f"{prefix}.auroc"] = roc_auc_score(is_ood, values)
            metrics[f"{prefix}.aupr_in"] = average_precision_score(1 - is_ood, -values)
            metrics[f"{prefix}.aupr_out"] = average_precision_score(is_ood, values)
            metrics[f"{prefix}.fpr95"] = fpr[np.searchsorted(tpr, 0.95)]
            # OSCR = closed-set accuracy x AUROC(correctly classified known vs OOD), ties too
            correct = saved[f"{known}.logits"].argmax(1) == known_labels
            correct_values = np.concatenate(
                [saved[f"{known}.scores.{score}"][correct], saved[f"{name}.scores.{score}"]]
            )
            correct_is_ood = np.repeat([0, 1], [correct.sum(), len(saved[f"{name}.labels"])])
            metrics[f"{prefix}.oscr"] = correct.mean() * roc_auc_score(
                correct_is_ood, correct_values
            )
    return metrics


def assert_matches(metrics: dict[str, object], expected: dict[str, object]) -> None:
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, list):
            assert metrics[key] == value, key
        else:
            assert metrics[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_evaluate_checkpoint_reproduces_the_runs_metrics(train_cfg, evaluate_cfg, tmp_path):
    # a 20% budget: some known images rejected
    train(train_cfg("model=mlae", "calibration.alpha=0.2", *TINY_TRAINING))
    run, best = tmp_path / "run", tmp_path / "run" / "checkpoints" / "best.ckpt"
    record = json.loads((run / "thresholds.json").read_text())
    # the model holds its thresholds in float32, like its scores
    thresholds = {name: float(np.float32(f["threshold"])) for name, f in record["scores"].items()}
    at_train = json.loads((run / "metrics.json").read_text())
    assert 0 < at_train["known_rejection_rate"] < 1
    assert_matches(at_train, recompute_metrics(run, "mnist", thresholds, record["voting_scores"]))

    again = evaluate_checkpoint(evaluate_cfg(best))
    assert_matches(again, at_train)
    assert (tmp_path / "evaluation" / "report.md").is_file()
    # the run's operating curve reused calibration's validation scores; osr.evaluate scores
    # the validation split itself: the same curve
    curves = [
        json.loads((d / "operating_curve.json").read_text()) for d in (run, tmp_path / "evaluation")
    ]
    assert curves[0]["rows"] and curves[0] == curves[1]
    in_distribution = np.load(tmp_path / "evaluation" / "scores.npz")

    own_cfg = evaluate_cfg(best, "ood.normalization=own")
    own_cfg.paths.output_dir = str(tmp_path / "own")
    own = evaluate_checkpoint(own_cfg)
    own_scores = np.load(tmp_path / "own" / "scores.npz")
    assert np.array_equal(
        own_scores["mnist.scores.recon_l2"], in_distribution["mnist.scores.recon_l2"]
    )
    # Each OOD set's own statistics centre it the way the digits are centred (the tiny
    # CIFAR-10 noise on zero), so its reconstruction errors fall and it separates less.
    for name in ("fashion_mnist", "cifar10"):
        key = f"{name}.scores.recon_l2"
        assert own_scores[key].mean() < 0.8 * in_distribution[key].mean(), name
    auroc = "ood.cifar10.scores.recon_l2.auroc"
    assert own[auroc] < again[auroc] - 0.5


@pytest.mark.slow
def test_wandb_runs_offline_and_records_our_metrics(train_cfg, tmp_path, monkeypatch):
    from osr.utils.wandb_setup import finish_wandb, prepare_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    prepare_wandb()
    assert os.environ["WANDB_MODE"] == "offline"
    try:
        returned, _ = train(
            train_cfg(
                "model=baseline",
                "logger=wandb",
                "trainer.max_epochs=2",
                "trainer.limit_train_batches=3",
                "trainer.limit_val_batches=1",
            )
        )
    finally:
        finish_wandb()
    run = tmp_path / "run"
    (offline,) = (run / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    history = logged_history(records)

    metrics = json.loads((run / "metrics.json").read_text())
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    assert scalars
    for key, value in scalars.items():
        assert history[f"eval/{key}"] == [pytest.approx(value, abs=1e-6)], key
    calibration = json.loads((run / "thresholds.json").read_text())
    for name, fitted in calibration["scores"].items():
        assert history[f"calib/{name}"] == [pytest.approx(fitted["threshold"])], name
    for name, value in calibration["validation"].items():
        assert history[f"calib/val_{name}"] == [pytest.approx(value)], name
    assert len(history["val/acc"]) == 2
    assert history["val/acc"][-1] == pytest.approx(returned["val/acc"])
    assert history["val/acc_best"][-1] == pytest.approx(max(history["val/acc"]))

    (table_path,) = history["eval/separation/path"]
    table = json.loads((offline / "files" / table_path).read_text())
    columns = ["auroc", "oscr", "aupr_in", "aupr_out", "fpr95"]
    assert table["columns"] == ["set", "score", *columns]
    detectors = {score for _, score, *_ in table["data"]}
    assert len(detectors) == 9  # detectors=default on the baseline
    assert len(table["data"]) == 2 * len(detectors)  # two OOD sets
    for name, score, *values in table["data"]:
        prefix = f"ood.{name}.scores.{score}"
        expected = [metrics[f"{prefix}.{k}"] for k in columns]
        assert values == pytest.approx(expected), prefix
    for plot in ("confusion_matrix", "scores_energy", "scores_max_logit", "training_curves"):
        (files,) = history[f"plots/{plot}/filenames"]
        assert (offline / "files" / files[0]).read_bytes()[:8] == PNG_MAGIC, plot
    assert logged_config(records)["model"]["voting_scores"] == ["energy", "gen", "max_logit"]


@pytest.mark.slow
def test_summarize_a_real_two_seed_sweep(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides("calibration=mean_std") if not o.startswith("report.")]
    done = run_module(
        "osr.train",
        "-m",
        "model=baseline",
        "seed=1,2",
        "calibration=mean_std",
        "calibration.k=2.0,3.0",
        f"paths.data_dir={tiny_data}",
        f"hydra.sweep.dir={sweep}",
        *overrides,
        *TINY_TRAINING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs: dict[str, list[dict]] = {"calibration.k=2.0": [], "calibration.k=3.0": []}
    curves: dict[str, list[dict]] = {"calibration.k=2.0": [], "calibration.k=3.0": []}
    for job in sorted(sweep.glob("[0-9]")):
        k = next(
            o for o in yaml.safe_load((job / ".hydra/overrides.yaml").read_text()) if "k=" in o
        )
        jobs[k].append(json.loads((job / "metrics.json").read_text()))
        curves[k].append(json.loads((job / "operating_curve.json").read_text()))
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

    # the results section of the same sweep (osr.summarize --markdown)
    section = markdown(sweep, ("seed",))
    assert "seed=1,2" in section and "calibration.k=2.0,3.0" in section  # the sweep command
    records = [json.loads((job / "run.json").read_text()) for job in sorted(sweep.glob("[0-9]"))]
    assert all(r["seconds"] > 0 and r["machine"] and r["commit"] for r in records)
    assert f"- commit: {records[0]['commit']}" in section
    for config, runs in jobs.items():
        block = section.split(f"### {config}")[1].split("### ")[0]
        for score in ("msp", "max_logit"):
            for key in ("auroc", "oscr"):
                values = [100 * run[f"ood.cifar10.scores.{score}.{key}"] for run in runs]
                expected = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
                row = next(line for line in block.splitlines() if line.startswith(f"| `{score}`"))
                assert expected in row, (config, score, key)
        # the conformal operating points of the baseline's three voting detectors: 50
        # calibration images (half the 100 held out), halves of 25 for the union, so alpha
        # from 5% up
        assert [row["alpha"] for row in curves[config][0]["rows"]] == [0.05, 0.1]
        row = next(line for line in block.splitlines() if line.startswith("| 10.0% |"))
        for name in ("mnist", "cifar10"):
            values = [100 * curve["rows"][-1]["rejected"][name] for curve in curves[config]]
            assert f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in row, name
