"""Figures and decisions that depend on the scores' order alone: the separation figures and
OSCR from exact ranks, whatever the scores' magnitude (infinities included), a NaN score an
error naming its detector and set; a NaN score rejected; the conformal rule's kept count
exact for float64 scores too."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor

from osr.modules import Classifier
from osr.scoring.conformal import Conformal
from osr.scoring.metrics import SetOutputs, open_set_metrics, oscr, separation
from osr.scoring.operating_curve import operating_curve
from osr.scoring.thresholds import MeanStd, Quantile, fit_thresholds
from osr.utils.errors import OSRError
from tests.test_models import CLASSES, OPTIMIZER

DTYPES = [torch.float32, torch.float64]


def figures(known: Tensor, correct: Tensor, ood: Tensor) -> dict[str, float]:
    return separation(known, ood) | {"oscr": oscr(known, correct, ood)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_separation_equals_sklearn_on_scores_with_ties(seed, dtype):
    rng = np.random.default_rng(seed)
    known = rng.integers(0, 12, 300).astype(float)  # 12 values: ties within and across sets
    ood = rng.integers(4, 20, 200).astype(float)
    m = separation(torch.tensor(known, dtype=dtype), torch.tensor(ood, dtype=dtype))
    scores, is_ood = np.r_[known, ood], np.r_[np.zeros(300), np.ones(200)]
    # known images positive, accepted as known at or below a threshold
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores, drop_intermediate=False)
    assert m == pytest.approx(
        {
            "auroc": roc_auc_score(is_ood, scores),
            "aupr_in": average_precision_score(1 - is_ood, -scores),
            "aupr_out": average_precision_score(is_ood, scores),
            "fpr95": fpr[tpr >= 0.95].min(),
        },
        abs=1e-12,
    )


def continuous_scores(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Known and OOD scores (overlapping) and which known images are classified correctly."""
    g = torch.Generator().manual_seed(0)
    known = torch.randn(300, generator=g, dtype=torch.float64).to(dtype)
    ood = (torch.randn(200, generator=g, dtype=torch.float64) * 1.5 + 1).to(dtype)
    return known, torch.rand(300, generator=g) < 0.9, ood


EXTREMES = [1e17, math.inf, -1e17, -math.inf]
# 1e300 is no float32 (it rounds to inf, covered above): float64 alone
CASES = [(v, d) for v in EXTREMES for d in DTYPES] + [(v, torch.float64) for v in (1e300, -1e300)]


@pytest.mark.parametrize(("value", "dtype"), CASES)
@pytest.mark.parametrize("where", ["known", "ood"])
def test_figures_are_those_of_the_ranks_however_extreme_a_score(where, value, dtype):
    """One set's highest score replaced by 1e17, 1e300 or inf gives the figures of it replaced
    by the largest finite score + 1 (the same ranks); the lowest by -1e17, -1e300 or -inf those
    of the smallest - 1."""
    known, correct, ood = continuous_scores(dtype)
    both = torch.cat([known, ood])
    stand_in = both.max().item() + 1 if value > 0 else both.min().item() - 1

    def with_score(new: float) -> dict[str, float]:
        sets = {"known": known.clone(), "ood": ood.clone()}
        target = sets[where]
        target[target.argmax() if value > 0 else target.argmin()] = new
        return figures(sets["known"], correct, sets["ood"])

    assert with_score(value) == with_score(stand_in)


def test_whole_sets_at_infinity_separate_perfectly():
    known, correct, ood = continuous_scores(torch.float64)
    assert figures(torch.full_like(known, -math.inf), correct, torch.full_like(ood, math.inf)) == {
        "auroc": 1.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
        "fpr95": 0.0,
        "oscr": correct.double().mean().item(),
    }


def set_outputs(scores: dict[str, list[float]], labels: list[int]) -> SetOutputs:
    return SetOutputs(
        scores={name: torch.tensor(values) for name, values in scores.items()},
        logits=torch.nn.functional.one_hot(torch.tensor(labels) % 3, 3).float(),
        labels=torch.tensor(labels),
        predictions=torch.tensor(labels),
    )


@pytest.mark.parametrize("nan_in", ["mnist", "fashion_mnist"])
def test_a_nan_score_is_an_error_naming_its_detector_and_set(nan_in):
    sets = {
        "mnist": set_outputs({"msp": [0.1, 0.2, 0.3], "energy": [1.0, 2.0, 3.0]}, [0, 1, 2]),
        "fashion_mnist": set_outputs({"msp": [0.4, 0.5], "energy": [4.0, 5.0]}, [3, 3]),
    }
    sets[nan_in].scores["energy"][1] = math.nan
    with pytest.raises(OSRError, match=rf"detector 'energy' .*NaN.* of {nan_in!r}"):
        open_set_metrics(sets, "mnist", 3, {"msp": 0.35, "energy": 3.5})
    known, ood = sets["mnist"].scores["energy"], sets["fashion_mnist"].scores["energy"]
    with pytest.raises(OSRError, match="NaN"):
        separation(known, ood)
    with pytest.raises(OSRError, match="NaN"):
        oscr(known, torch.ones(3, dtype=torch.bool), ood)


def classifier(voting: list[str]) -> Classifier:
    """Detectors msp, max_logit and energy; ``voting`` of them vote."""
    return Classifier({"_target_": "osr.models.ConvNet"}, OPTIMIZER, CLASSES, voting)


@pytest.mark.parametrize("rule", [MeanStd(k=3.0), Quantile(q=0.99), Conformal(alpha=0.1)])
def test_a_nan_calibration_score_is_an_error_naming_its_detector_and_split(rule):
    scores = {"msp": torch.rand(50), "energy": torch.rand(50)}
    scores["energy"][7] = math.nan
    with pytest.raises(OSRError, match=r"energy gave NaN on 1 of 50 images of the mnist val"):
        fit_thresholds(scores, rule, "mnist val")


def test_a_nan_voting_score_rejects():
    module = classifier(["msp", "energy"])
    module.set_thresholds({"msp": 0.5, "max_logit": 0.5, "energy": 0.5})
    nan = math.nan
    scores = {
        "msp": torch.tensor([0.1, nan, 0.1, 0.9]),
        "energy": torch.tensor([0.1, 0.1, nan, 0.1]),
        "max_logit": torch.full((4,), nan),  # not voting: no effect
    }
    labels = module.decide(torch.eye(10)[:4], scores)
    assert labels.tolist() == [0, module.unknown_label, module.unknown_label, module.unknown_label]


def test_the_operating_curve_counts_a_nan_score_as_rejected():
    validation = {"s": torch.arange(100.0)}  # alpha = 0.1 keeps 91 of them: threshold 90
    sets = {"mnist": {"s": torch.tensor([0.0, math.nan, 50.0, 95.0])}}
    curve = operating_curve(Conformal(), validation, sets, alphas=(0.1,))
    assert curve["rows"][0]["rejected"]["mnist"] == 0.5


@pytest.mark.parametrize("voting", [["msp"], ["msp", "energy"]])
def test_float64_scores_keep_exactly_the_conformal_count(voting):
    """Scores that float32 thresholds cannot hold exactly: unless fitting and deciding both
    read them as float32, the image that sets the threshold can fall on the wrong side."""
    module = classifier(voting)
    n, g = 200, torch.Generator().manual_seed(0)
    for draw in range(20):
        scores = {s: torch.randn(n, generator=g, dtype=torch.float64) for s in module.score_names}
        rule = Conformal(alpha=0.1, seed=draw)
        thresholds, record = rule.fit_union_record({s: scores[s] for s in voting})
        # the threshold part: the images that set the union's threshold (all, for one detector)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(draw))
        part = order[n - record["threshold_part"] :]
        module.set_thresholds({s: math.inf for s in module.score_names} | thresholds)
        for given in (None, thresholds):  # as calibrated; as cross-fitted
            kept = module.decide(torch.zeros(n, 10), scores, given) != module.unknown_label
            assert kept[part].sum().item() == record["rank"], (draw, given)
