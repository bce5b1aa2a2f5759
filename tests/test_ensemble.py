"""An ensemble of calibrated runs scored as one model by ``osr.evaluate ensemble=[...]``: its
scores are the members' mean, its class probabilities their mean softmax, its thresholds
fitted anew on the shared validation split, and its figures those of its saved scores."""

import json

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from osr.scoring.ensemble import check_members
from osr.train import train
from osr.utils.config import to_plain
from osr.utils.errors import OSRError
from tests.conftest import TINY_TRAINING, run_module
from tests.test_evaluation import assert_matches, recompute_metrics


def train_member(train_cfg, tmp_path, name, *overrides):
    cfg = train_cfg("model=baseline", *TINY_TRAINING, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    train(cfg)
    return tmp_path / name


@pytest.mark.slow
def test_ensemble_scores_are_the_members_mean_and_its_figures_its_own(
    train_cfg, tiny_data, tmp_path
):
    a = train_member(train_cfg, tmp_path, "a")
    b = train_member(train_cfg, tmp_path, "b", "seed=7")  # another initialization alone
    out = tmp_path / "evaluation"
    done = run_module(
        "osr.evaluate",
        f"ckpt_path={a}/checkpoints/best.ckpt",
        f"ensemble=[{b}/checkpoints/best.ckpt]",
        f"paths.data_dir={tiny_data}",
        "ood.sets.fashion_mnist.download=false",
        "ood.sets.cifar10.download=false",
        "report.tsne_points=60",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ensemble=" in json.loads((out / "run.json").read_text())["command"]
    ens, sa, sb = (np.load(d / "scores.npz") for d in (out, a, b))
    voting = ["energy", "gen", "max_logit"]  # model=baseline's
    for name in ("mnist", "fashion_mnist", "cifar10"):
        for score in (*voting, "msp", "knn"):
            key = f"{name}.scores.{score}"
            mean = (sa[key].astype(np.float64) + sb[key]) / 2
            np.testing.assert_allclose(ens[key], mean, rtol=1e-5, atol=1e-6, err_msg=key)
        probabilities = [torch.from_numpy(s[f"{name}.logits"]).softmax(1) for s in (sa, sb)]
        expected = torch.stack(probabilities).mean(0).log().numpy()
        np.testing.assert_allclose(ens[f"{name}.logits"], expected, rtol=1e-5, atol=1e-6)

    record = json.loads((out / "thresholds.json").read_text())
    assert record["ensemble"] == [str(d / "checkpoints/best.ckpt") for d in (a, b)]
    assert record["voting_scores"] == voting and record["rule"]["name"] == "conformal"
    thresholds = {n: float(np.float32(f["threshold"])) for n, f in record["scores"].items()}
    members = [json.loads((d / "thresholds.json").read_text())["scores"] for d in (a, b)]
    for name in voting:  # its own, not either member's
        assert thresholds[name] not in {m[name]["threshold"] for m in members}, name
    # the decisions and every figure follow from the saved scores and these thresholds
    assert_matches(metrics, recompute_metrics(out, "mnist", thresholds, voting))
    assert "best.ckpt + " in (out / "report.md").read_text()


def test_runs_that_differ_in_seed_alone_share_the_split(train_cfg):
    runs = [to_plain(train_cfg(f"seed={seed}")) for seed in (1, 2)]
    check_members(runs, ["a.ckpt", "b.ckpt"])  # seed moves initialization, not the split
    other = {**runs[1], "data": {**runs[1]["data"], "seed": 7}}
    with pytest.raises(OSRError, match=r"b.ckpt has data.seed=7 .* with data.seed=12345"):
        check_members([runs[0], other], ["a.ckpt", "b.ckpt"])


def test_members_must_share_the_split():
    base = {"data": {"_target_": "osr.data.MNISTDataModule", "known_classes": None}}
    other = {"data": {**base["data"], "val_size": 7}}
    with pytest.raises(OSRError, match=r"b.ckpt has data.val_size=7 .*with data.val_size=None"):
        check_members([base, other], ["a.ckpt", "b.ckpt"])
    check_members([base, {"data": {**base["data"], "rotate": 5}}], ["a.ckpt", "b.ckpt"])
