"""Detectors in real runs: fitted on the known training split after fit, their state in the
checkpoint, never refitted by evaluate, added to an old checkpoint by osr.calibrate, and
checkpoints from before the detectors config still evaluated with their built-in scores."""

import json
from pathlib import Path

import pytest
import torch

from osr.evaluate import evaluate_checkpoint
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from tests.conftest import TINY_TRAINING, run_module

FIXTURES = Path(__file__).parent / "fixtures"
SETS = ("fashion_mnist", "cifar10")


def detectors_in(metrics: dict, ood_set: str) -> set[str]:
    prefix = f"ood.{ood_set}.scores."
    return {k[len(prefix) :].split(".")[0] for k in metrics if k.startswith(prefix)}


@pytest.mark.slow
@pytest.mark.parametrize(("model", "expected"), [("baseline", 16), ("mlae", 18)])
def test_all_detectors_run_end_to_end_and_evaluate_never_refits(
    train_cfg, evaluate_cfg, tmp_path, model, expected
):
    train(train_cfg(f"model={model}", "detectors=all", *TINY_TRAINING))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for ood_set in SETS:
        assert len(detectors_in(metrics, ood_set)) == expected >= 15
    ckpt = read_checkpoint(run / "checkpoints" / "best.ckpt")
    fitted = {"mahalanobis", "rmd", "knn", "vim", "react", "class_distance", "openmax"}
    fitted |= {"fdbd", "ash", "dice"} & set(ckpt["osr_detectors"])
    assert fitted <= set(ckpt["osr_detectors"])
    assert set(ckpt["osr_thresholds"]) == detectors_in(metrics, "cifar10")
    again = evaluate_checkpoint(evaluate_cfg(run / "checkpoints" / "best.ckpt"))
    for key, value in metrics.items():
        assert again[key] == (value if isinstance(value, list) else pytest.approx(value)), key


@pytest.mark.slow
def test_detectors_are_fitted_on_the_known_training_split_only(train_cfg):
    known = [2, 4, 5, 9, 8, 3]
    cfg = train_cfg(
        "model=baseline",
        f"data.known_classes=[{','.join(map(str, known))}]",
        "+detectors.class_distance._target_=osr.detectors.ClassDistance",
        *TINY_TRAINING,
    )
    _, objects = train(cfg)
    module, datamodule = objects["model"], objects["datamodule"]
    centers = module.detectors["class_distance"].centers
    assert centers.shape[0] == len(known)  # held-out digits have no center

    def class_means(split) -> torch.Tensor:
        module.eval()
        with torch.no_grad():
            features = module.model_outputs(datamodule.transform(split.tensors[0])).features
        labels = split.tensors[1]
        return torch.stack([features[labels == c].mean(0) for c in range(len(known))])

    assert torch.allclose(centers, class_means(datamodule.train_set), atol=1e-5)
    assert not torch.allclose(centers, class_means(datamodule.val_set), atol=1e-3)


@pytest.mark.slow
def test_calibrate_adds_detectors_to_a_checkpoint(train_cfg, tmp_path, tiny_data):
    train(train_cfg("model=baseline", *TINY_TRAINING))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert "odin" not in read_checkpoint(best)["osr_thresholds"]
    done = run_module(
        "osr.calibrate",
        f"ckpt_path={best}",
        f"hydra.run.dir={tmp_path / 'cal'}",
        f"paths.data_dir={tiny_data}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "detectors=all",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "cal" / "thresholds.json").read_text())
    assert record["rule"]["name"] == "conformal" and record["rule"]["alpha"] == 0.1  # the run's
    assert record["detectors_fitted"]["split"] == "mnist train"
    assert {"knn", "openmax", "class_distance"} <= set(record["detectors_fitted"]["names"])
    calibrated = read_checkpoint(tmp_path / "cal" / "checkpoints" / "calibrated.ckpt")
    assert {"odin", "openmax", "knn"} <= set(calibrated["osr_thresholds"])
    assert calibrated["osr_config"]["detectors"]["odin"]["detector"]["norm_std"] == [0.31]
    module = module_from_checkpoint(calibrated)
    assert module.is_calibrated and len(module.detectors) == 16


@pytest.mark.slow
def test_checkpoint_from_before_detectors_still_evaluates(evaluate_cfg):
    """A baseline checkpoint written by the code before detectors (commit 8902dcc, tiny data,
    optimizer state dropped): thresholds in a state_dict buffer, no detectors config."""
    old = FIXTURES / "pre_detectors_baseline.pt"
    written = torch.load(old, weights_only=True)  # as 8902dcc wrote it; read_checkpoint migrates
    assert "osr_thresholds" not in written and "detectors" not in written["osr_config"]
    legacy = written["state_dict"]["thresholds"].tolist()
    module = module_from_checkpoint(read_checkpoint(old))
    assert module.score_names == ("msp", "max_logit", "energy")
    assert list(module.threshold_dict().values()) == pytest.approx(legacy)
    metrics = evaluate_checkpoint(evaluate_cfg(old))
    at_the_time = json.loads((FIXTURES / "pre_detectors_baseline_metrics.json").read_text())
    for key in ("closed_set.accuracy", "known_rejection_rate", "mnist.count"):
        assert metrics[key] == pytest.approx(at_the_time[key]), key
    for score in ("msp", "max_logit", "energy"):
        assert metrics[f"thresholds.{score}"] == pytest.approx(at_the_time[f"thresholds.{score}"])
        assert f"ood.cifar10.scores.{score}.auroc" in metrics
