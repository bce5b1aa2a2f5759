"""An ensemble of calibrated runs scored as one model by ``osr.evaluate ensemble=[...]``: its
class probabilities are the members' mean softmax, its detectors of those probabilities are
computed from them, its other detectors are the mean of the members' scores on a common scale
fitted on the validation split, its thresholds fitted anew on that split, and its figures
those of its saved scores. Runs of other seeds share the split when trained with one data.seed."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from scipy.stats import norm
from torch import Tensor, nn

from osr.data.datamodules import MNISTDataModule
from osr.detectors import Detector, MaxLogit, ModelOutputs, score_detectors
from osr.detectors.builtin import MSP, Energy
from osr.scoring.ensemble import Ensemble, check_members
from osr.scoring.outputs import collect_scores
from osr.train import train
from osr.utils.checkpoints import (
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
)
from osr.utils.config import to_plain
from osr.utils.errors import OSRError
from tests.conftest import TINY_TRAINING, run_module
from tests.test_evaluation import assert_matches, recompute_metrics


def by_hand(validation: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The standard normal quantile of each score's mid-rank among ``validation``."""
    reference = np.sort(validation.astype(np.float64))
    below = np.searchsorted(reference, scores, side="left")
    at_or_below = np.searchsorted(reference, scores, side="right")
    return norm.ppf((below + at_or_below + 1) / (2 * len(reference) + 2))


def mean_softmax(logits: list[np.ndarray]) -> np.ndarray:
    return np.mean([torch.from_numpy(z).double().softmax(1).numpy() for z in logits], axis=0)


def gen_by_hand(probabilities: np.ndarray, gamma: float = 0.1) -> np.ndarray:
    """pytorch-ood's GEN (conf/detectors/default.yaml: gamma 0.1, every class)."""
    p = probabilities.clip(1e-7, 1 - 1e-7)
    return (p**gamma * (1 - p) ** gamma).mean(1)


class FeatureNorm(Detector):
    needs = frozenset({"features"})

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return outputs.features.norm(dim=1)


DETECTORS = {"msp": MSP, "max_logit": MaxLogit, "energy": Energy, "norm": FeatureNorm}


class Member(nn.Module):
    """What the ensemble reads of a calibrated ``OpenSetModule``: linear logits and features
    of the image, the feature-norm score multiplied by ``scale``."""

    def __init__(self, seed: int, scale: float = 1.0, detectors=tuple(DETECTORS)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logit_weight = torch.randn(28 * 28, 10, generator=g) / 28
        self.feature_weight = torch.randn(28 * 28, 8, generator=g) / 28
        self.scale, self.device = scale, torch.device("cpu")
        self.detectors = {name: DETECTORS[name]() for name in detectors}
        classes = [str(i) for i in range(10)]
        self.hparams = SimpleNamespace(class_names=classes, voting_scores=["msp"])
        self.num_classes, self.unknown_label = 10, 10
        self.objective = SimpleNamespace(is_fitted=True)

    @property
    def score_names(self) -> tuple[str, ...]:
        return tuple(self.detectors)

    def logits_and_scores(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        flat = x.flatten(1)
        outputs = ModelOutputs(flat @ self.logit_weight, features=flat @ self.feature_weight)
        scores = score_detectors(self.detectors, outputs)
        if "norm" in scores:
            scores["norm"] = scores["norm"] * self.scale
        return outputs.logits, scores


@pytest.fixture
def digits(tiny_data):
    dm = MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=100, download=False)
    dm.setup("validate")
    return dm


def test_members_on_a_thousandfold_scale_weigh_as_much_as_on_their_own(digits):
    images = torch.cat([x for x, _ in digits.iterate(digits.val_dataloader(), "cpu")])
    noise = torch.randn(40, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    test = images[:40] + 0.5 * noise  # beyond the split's scores too
    ensembles = [Ensemble([Member(0), Member(1, scale)], ["a", "b"]) for scale in (1, 1000)]
    for ensemble in ensembles:
        ensemble.fit_scales(digits)
    same, scaled = (e.logits_and_scores(test)[1] for e in ensembles)
    for name in ("norm", "max_logit", "energy"):
        assert torch.equal(same[name], scaled[name]), name

    # the mean of each member's normal score among its own scores of the validation images
    members = [Member(0), Member(1, 1000)]
    validation = [m.logits_and_scores(images)[1] for m in members]
    on_test = [m.logits_and_scores(test)[1] for m in members]
    for name in ("norm", "max_logit", "energy"):
        pairs = zip(validation, on_test, strict=True)
        expected = np.mean([by_hand(v[name].numpy(), t[name].numpy()) for v, t in pairs], 0)
        np.testing.assert_allclose(scaled[name].numpy(), expected, atol=1e-6, err_msg=name)
    # the mean of the raw scores ranks the images otherwise once a member's scale changes
    a, b = on_test[0]["norm"], on_test[1]["norm"]
    assert not torch.equal((a + b / 1000).argsort(), (a + b).argsort())


def test_probability_scores_come_from_the_mean_softmax(digits):
    members = [Member(0, detectors=["msp"]), Member(1, detectors=["msp"])]
    ensemble = Ensemble(members, ["a", "b"])
    x = torch.cat([x for x, _ in digits.iterate(digits.val_dataloader(), "cpu")])[:50]
    logits, scores = ensemble.logits_and_scores(x)  # nothing to put on a common scale
    probabilities = mean_softmax([m.logits_and_scores(x)[0].numpy() for m in members])
    np.testing.assert_allclose(logits.numpy(), np.log(probabilities), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores["msp"].numpy(), 1 - probabilities.max(1), atol=1e-6)
    # max_logit and energy read the logits' scale, which a mean of probabilities lacks
    assert Ensemble([Member(0), Member(1)], ["a", "b"]).predictive == ("msp",)


def test_seeds_of_one_split_ensemble_with_one_data_seed(train_cfg):
    runs = [to_plain(train_cfg(f"seed={seed}", "data.seed=12345")) for seed in (1, 2)]
    check_members(runs, ["a.ckpt", "b.ckpt"])  # seed moves initialization, not the split
    runs = [to_plain(train_cfg(f"seed={seed}")) for seed in (1, 2)]  # data.seed follows seed
    with pytest.raises(OSRError, match=r"b.ckpt has data.seed=2 .* with data.seed=1\. .*-m seed="):
        check_members(runs, ["a.ckpt", "b.ckpt"])


def test_members_must_share_the_split():
    base = {"data": {"_target_": "osr.data.MNISTDataModule", "known_classes": None}}
    other = {"data": {**base["data"], "val_size": 7}}
    with pytest.raises(OSRError, match=r"b.ckpt has data.val_size=7 .*with data.val_size=None"):
        check_members([base, other], ["a.ckpt", "b.ckpt"])
    check_members([base, {"data": {**base["data"], "rotate": 5}}], ["a.ckpt", "b.ckpt"])


def train_member(train_cfg, tmp_path, name, *overrides):
    cfg = train_cfg("model=baseline", *TINY_TRAINING, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    train(cfg)
    return tmp_path / name


def validation_scores(run, data_dir) -> dict[str, np.ndarray]:
    ckpt = read_checkpoint(run / "checkpoints/best.ckpt")
    datamodule = datamodule_from_checkpoint(ckpt, {"data_dir": str(data_dir)})
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    scores, _, _ = collect_scores(module_from_checkpoint(ckpt), datamodule, loader)
    return {name: s.numpy() for name, s in scores.items()}


@pytest.mark.slow
def test_an_ensemble_of_two_seeds_scores_and_calibrates_as_one_model(
    train_cfg, tiny_data, tmp_path
):
    a = train_member(train_cfg, tmp_path, "a")
    # another initialization and data order, the same training/validation split
    b = train_member(train_cfg, tmp_path, "b", "seed=7", "data.seed=12345")
    out = tmp_path / "evaluation"
    done = run_module(
        "osr.evaluate",
        f"ckpt_path={a}/checkpoints/best.ckpt",
        f"ensemble=[{b}/checkpoints/best.ckpt]",
        f"paths.data_dir={tiny_data}",
        "report.tsne_points=60",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ensemble=" in json.loads((out / "run.json").read_text())["command"]
    ens, sa, sb = (np.load(d / "scores.npz") for d in (out, a, b))
    validation = [validation_scores(d, tiny_data) for d in (a, b)]
    voting = ["energy", "gen", "max_logit"]  # model=baseline's
    for name in ("mnist", "fashion_mnist", "cifar10"):
        probabilities = mean_softmax([s[f"{name}.logits"] for s in (sa, sb)])
        np.testing.assert_allclose(
            ens[f"{name}.logits"], np.log(probabilities), rtol=1e-5, atol=1e-6
        )
        key = f"{name}.scores."
        np.testing.assert_allclose(ens[f"{key}msp"], 1 - probabilities.max(1), atol=1e-6)
        np.testing.assert_allclose(ens[f"{key}gen"], gen_by_hand(probabilities), atol=1e-6)
        for score in ("energy", "max_logit", "knn"):
            pairs = zip(validation, (sa, sb), strict=True)
            expected = np.mean([by_hand(v[score], s[key + score]) for v, s in pairs], 0)
            np.testing.assert_allclose(ens[key + score], expected, rtol=1e-6, atol=1e-6)

    record = json.loads((out / "thresholds.json").read_text())
    assert record["ensemble"] == [str(d / "checkpoints/best.ckpt") for d in (a, b)]
    assert record["voting_scores"] == voting and record["rule"]["name"] == "conformal"
    assert {"msp", "gen"} <= set(record["member_scores"]["mean_probabilities"])
    assert record["member_scores"]["split"] == "mnist val"
    thresholds = {n: float(np.float32(f["threshold"])) for n, f in record["scores"].items()}
    members = [json.loads((d / "thresholds.json").read_text())["scores"] for d in (a, b)]
    for name in voting:  # its own, not either member's
        assert thresholds[name] not in {m[name]["threshold"] for m in members}, name
    # the decisions and every figure follow from the saved scores and these thresholds
    assert_matches(metrics, recompute_metrics(out, "mnist", thresholds, voting))
    assert "best.ckpt + " in (out / "report.md").read_text()
