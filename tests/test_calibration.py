import json
from pathlib import Path

import numpy as np
import pytest
import torch

from osr.scoring.thresholds import MeanStd, Quantile, fit_thresholds
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from osr.utils.errors import NotCalibratedError
from tests.conftest import TINY_TRAINING, run_module
from tests.test_models import make_module


def test_mean_std_equals_numpy():
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, 3.0, size=5000)
    fitted = MeanStd(k=3).fit(torch.as_tensor(scores, dtype=torch.float32))
    assert fitted == pytest.approx(np.mean(scores) + 3 * np.std(scores), rel=1e-6)
    stats = fit_thresholds({"s": torch.as_tensor(scores)}, MeanStd(k=2))["s"]
    assert stats["mean"] == pytest.approx(np.mean(scores))
    assert stats["std"] == pytest.approx(np.std(scores))
    assert stats["count"] == 5000


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_quantile_keeps_the_requested_fraction(q):
    scores = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    threshold = Quantile(q=q).fit(scores)
    assert (scores <= threshold).float().mean().item() == pytest.approx(q, abs=1e-3)
    assert threshold == pytest.approx(np.quantile(scores.numpy(), q), rel=1e-5)


def test_predict_open_rejects_exactly_when_a_voting_score_exceeds_its_threshold():
    torch.manual_seed(0)
    module = make_module("mlae").eval()
    x = torch.randn(64, 1, 28, 28)
    logits, scores = module.logits_and_scores(x)
    thresholds = {name: values.median().item() for name, values in scores.items()}
    thresholds["msp"] = -1.0  # would reject everything, but msp does not vote here
    module.set_thresholds(thresholds)
    labels = module.predict_open(x)
    expected_unknown = (scores["recon_l2"] > thresholds["recon_l2"]) | (
        scores["binary_diff"] > thresholds["binary_diff"]
    )
    assert torch.equal(labels == 10, expected_unknown)
    assert torch.equal(labels[~expected_unknown], logits.argmax(1)[~expected_unknown])
    assert 0 < expected_unknown.sum() < 64


def test_uncalibrated_model_refuses_open_set_predictions():
    module = make_module("baseline")
    with pytest.raises(NotCalibratedError, match="calibrate it first"):
        module.predict_open(torch.randn(2, 1, 28, 28))


def tiny_run(train_cfg, *overrides):
    return train(train_cfg(*TINY_TRAINING, *overrides))


@pytest.mark.slow
def test_thresholds_land_in_json_buffers_and_checkpoints(train_cfg, tmp_path):
    _, objects = tiny_run(train_cfg, "model=mlae")
    module = objects["model"]
    run = tmp_path / "run"
    record = json.loads((run / "thresholds.json").read_text())
    # the default rule, at the tiny tests' budget
    rule = {"alpha": 0.1, "delta": None, "rank_fraction": 0.5, "seed": 0, "name": "conformal"}
    assert record["rule"] == rule
    assert record["voting_scores"] == ["recon_l2", "binary_diff", "max_logit"]
    default_detectors = {"recon_l2", "binary_diff", "msp", "max_logit", "energy", "gen"}
    default_detectors |= {"mahalanobis", "rmd", "knn", "vim", "react"}
    assert set(record["scores"]) == default_detectors
    assert record["detectors_fitted"]["split"] == "mnist train"
    # the calibration split: half of the 100 held-out images (the other half selects)
    assert record["scores"]["recon_l2"]["count"] == 50 and record["split"] == "mnist calibration"
    assert record["checkpoint"].endswith("best.ckpt")
    assert module.is_calibrated
    for name in ("best.ckpt", "last.ckpt"):
        loaded = module_from_checkpoint(read_checkpoint(run / "checkpoints" / name))
        assert loaded.threshold_dict() == pytest.approx(module.threshold_dict())
        assert loaded.threshold_dict()["recon_l2"] == pytest.approx(
            record["scores"]["recon_l2"]["threshold"]
        )
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "calib/recon_l2" in metrics and "calib/val_open_set_accuracy" in metrics


@pytest.mark.slow
def test_thresholds_stay_out_of_checkpoints_holding_other_weights(train_cfg, tmp_path, tiny_data):
    # best = the lowest val accuracy: the first epoch's weights, while last.ckpt is the second's
    tiny_run(
        train_cfg, "model=baseline", "trainer.max_epochs=2", "callbacks.model_checkpoint.mode=min"
    )
    best, last = (tmp_path / "run" / "checkpoints" / n for n in ("best.ckpt", "last.ckpt"))
    best_ckpt, last_ckpt = read_checkpoint(best), read_checkpoint(last)
    assert best_ckpt["epoch"] == 0 and last_ckpt["global_step"] == 6
    weights = [n for n in best_ckpt["state_dict"] if n.startswith("net.")]
    assert not all(
        torch.equal(best_ckpt["state_dict"][n], last_ckpt["state_dict"][n]) for n in weights
    )
    assert module_from_checkpoint(best_ckpt).is_calibrated
    assert last_ckpt["osr_thresholds"] == {} and last_ckpt["osr_detectors"] == {}
    refused = run_module(
        "osr.evaluate",
        f"ckpt_path={last}",
        f"hydra.run.dir={tmp_path / 'ev'}",
        f"paths.data_dir={tiny_data}",
    )
    assert refused.returncode == 2
    assert f"checkpoint {last} has no thresholds" in refused.stderr
    assert "python -m osr.calibrate" in refused.stderr


@pytest.mark.slow
def test_validation_figures_judge_the_validation_split_by_the_calibrated_thresholds(
    train_cfg, tmp_path
):
    """They never read the calibration images, so a search selecting on them leaves those
    images to the thresholds alone."""
    returned, objects = tiny_run(train_cfg, "model=mlae")
    module, datamodule = objects["model"], objects["datamodule"]
    batches = list(datamodule.iterate(datamodule.val_dataloader(), module.device))
    x, y = torch.cat([b[0] for b in batches]).cpu(), torch.cat([b[1] for b in batches]).cpu()
    module.eval()
    with torch.no_grad():
        decisions = module.predict_open(x)
    rejected = (decisions == module.unknown_label).float().mean().item()
    assert returned["calib/val_known_rejection_rate"] == pytest.approx(rejected, abs=1e-6)
    accuracy = (decisions == y).float().mean().item()
    assert returned["calib/val_open_set_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    record = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert record["validation_images"] == "the mnist val split, judged with these thresholds"


@pytest.mark.slow
def test_without_a_calibration_split_each_half_is_judged_by_the_other_halfs_thresholds(
    train_cfg,
):
    # q=1: thresholds at the maximum, so a split judged by its own thresholds rejects nothing
    returned, objects = tiny_run(
        train_cfg,
        "model=mlae",
        "calibration=quantile",
        "calibration.q=1.0",
        "data.calibration_size=0",
    )
    module, datamodule = objects["model"], objects["datamodule"]
    batches = list(datamodule.iterate(datamodule.calibration_dataloader(), module.device))
    x, y = torch.cat([b[0] for b in batches]).cpu(), torch.cat([b[1] for b in batches]).cpu()
    module.eval()
    with torch.no_grad():
        logits, scores = module.logits_and_scores(x)
    scores = {name: scores[name].numpy() for name in module.hparams.voting_scores}
    n = len(y)
    halves = (np.arange(n) < n // 2, np.arange(n) >= n // 2)
    rejected = np.zeros(n, dtype=bool)
    for fit_on, judged in (halves, halves[::-1]):
        for values in scores.values():
            rejected[judged] |= values[judged] > np.quantile(values[fit_on], 1.0)
    decisions = np.where(rejected, module.unknown_label, logits.argmax(1).numpy())
    assert 0 < rejected.mean() < 0.5
    assert returned["calib/val_known_rejection_rate"] == pytest.approx(rejected.mean(), abs=1e-6)
    assert returned["calib/val_open_set_accuracy"] == pytest.approx(
        (decisions == y.numpy()).mean(), abs=1e-6
    )


def run_calibrate(ckpt: Path, out: Path, data_dir: Path, *overrides: str) -> dict:
    done = run_module(
        "osr.calibrate",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={out}",
        f"paths.data_dir={data_dir}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        *overrides,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "thresholds.json").read_text())


@pytest.mark.slow
def test_recalibrate_checkpoint_with_quantile_rule(train_cfg, tmp_path, tiny_data):
    tiny_run(train_cfg, "model=baseline")
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    before = read_checkpoint(best)["osr_thresholds"]
    record = run_calibrate(
        best, tmp_path / "cal", tiny_data, "calibration=quantile", "calibration.q=0.9"
    )
    assert record["rule"] == {"q": 0.9, "name": "quantile"}
    calibrated = module_from_checkpoint(
        read_checkpoint(tmp_path / "cal/checkpoints/calibrated.ckpt")
    )
    assert calibrated.threshold_dict()["msp"] == pytest.approx(record["scores"]["msp"]["threshold"])
    assert read_checkpoint(best)["osr_thresholds"] == before  # untouched
    recorded = read_checkpoint(tmp_path / "cal/checkpoints/calibrated.ckpt")["osr_config"]
    assert recorded["calibration"] == {"_target_": "osr.scoring.thresholds.Quantile", "q": 0.9}
    evaluated = run_module(
        "osr.evaluate",
        f"ckpt_path={tmp_path / 'cal/checkpoints/calibrated.ckpt'}",
        f"hydra.run.dir={tmp_path / 'ev'}",
        f"paths.data_dir={tiny_data}",
        "ood=none",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "- **calibration**: q=0.9 (Quantile)" in (tmp_path / "ev/report.md").read_text()
    # without calibration=, osr.calibrate refits by the checkpoint's rule (quantile 0.9), not
    # by the train default (the conformal rule)
    again = run_calibrate(
        tmp_path / "cal/checkpoints/calibrated.ckpt", tmp_path / "cal2", tiny_data
    )
    assert again["rule"] == {"q": 0.9, "name": "quantile"}
    assert again["scores"]["msp"]["threshold"] == pytest.approx(
        record["scores"]["msp"]["threshold"]
    )


@pytest.mark.slow
def test_two_ddp_processes_fit_the_same_thresholds_as_one(train_cfg, tmp_path, tiny_data):
    # a calibration split of 101 images (half the held-out 202): uneven shards
    tiny_run(train_cfg, "model=mlae", "data.val_size=202")
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    one = run_calibrate(best, tmp_path / "one", tiny_data, "trainer.devices=1")
    two = run_calibrate(
        best,
        tmp_path / "two",
        tiny_data,
        "trainer=ddp",
        "trainer.devices=2",
    )
    assert one["scores"]["recon_l2"]["count"] == two["scores"]["recon_l2"]["count"] == 101
    for name, fitted in one["scores"].items():
        for key in ("threshold", "mean", "std"):
            assert two["scores"][name][key] == pytest.approx(fitted[key], rel=1e-6, abs=1e-9)
