import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from osr.scoring.metrics import SetOutputs, open_set_metrics, oscr, separation


def test_separation_hand_computed_case():
    known = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ood = torch.tensor([0.35, 0.5, 0.6, 0.7])
    m = separation(known, ood)
    # 15 of the 16 (ood, known) pairs are ordered correctly
    assert m["auroc"] == pytest.approx(15 / 16)
    # accepting 95% of known needs the threshold at 0.4: one OOD image (0.35) accepted
    assert m["fpr95"] == pytest.approx(1 / 4)
    perfect = separation(known, ood + 1)
    assert perfect == pytest.approx({"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0})


@pytest.mark.parametrize(
    ("seed", "scale", "offset"), [(0, 1, 0), (1, 1, 0), (2, 1, 0), (3, 100, 300), (4, 3, -50)]
)
def test_separation_matches_sklearn_on_random_scores(seed, scale, offset):
    """Including large scores (like binary_diff's pixel counts) that a sigmoid would tie."""
    rng = np.random.default_rng(seed)
    known = np.round(rng.normal(0, 1, 700) * scale + offset)
    ood = np.round(rng.normal(1, 1.5, 500) * scale + offset)
    m = separation(torch.tensor(known), torch.tensor(ood))
    scores = np.concatenate([known, ood])
    is_ood = np.concatenate([np.zeros(700), np.ones(500)])
    assert m["auroc"] == pytest.approx(roc_auc_score(is_ood, scores), abs=1e-6)
    assert m["aupr_out"] == pytest.approx(average_precision_score(is_ood, scores), abs=1e-6)
    assert m["aupr_in"] == pytest.approx(average_precision_score(1 - is_ood, -scores), abs=1e-6)
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores)
    assert m["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-6)


def outputs(labels, predictions, logits_argmax, score):
    logits = torch.nn.functional.one_hot(torch.tensor(logits_argmax), 3).float()
    return SetOutputs(
        scores={"s": torch.tensor(score, dtype=torch.float)},
        logits=logits,
        labels=torch.tensor(labels),
        predictions=torch.tensor(predictions),
    )


def test_open_set_metrics_hand_computed():
    # 3 known classes, UNKNOWN = 3
    known = outputs([0, 1, 2, 2], [0, 1, 3, 1], [0, 1, 2, 1], [0.1, 0.2, 0.9, 0.3])
    ood = outputs([3, 3], [3, 0], [2, 0], [0.8, 0.25])
    m = open_set_metrics({"mnist": known, "fashion_mnist": ood}, "mnist", 3, {"s": 0.5})
    assert m["closed_set.accuracy"] == pytest.approx(3 / 4)
    assert m["open_set.accuracy"] == pytest.approx(3 / 6)  # 0, 1 and one OOD right
    assert m["open_set.binary_accuracy"] == pytest.approx(4 / 6)
    assert m["known_rejection_rate"] == pytest.approx(1 / 4)
    assert m["ood.fashion_mnist.rejection_rate"] == pytest.approx(1 / 2)
    assert m["thresholds.s"] == 0.5
    assert m["ood.fashion_mnist.scores.s.auroc"] == pytest.approx(5 / 8)
    # the correctly classified known images score 0.1, 0.2 and 0.9 (the fourth is
    # misclassified); four of their six pairs with the OOD scores 0.8 and 0.25 are ordered
    assert m["ood.fashion_mnist.scores.s.oscr"] == pytest.approx(4 / (4 * 2))
    cm = np.array(m["open_set.confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == 6 and cm[2, 3] == 1 and cm[3, 0] == 1
    from sklearn.metrics import f1_score

    expected_f1 = f1_score([0, 1, 2, 2, 3, 3], [0, 1, 3, 1, 3, 0], average="macro")
    assert m["open_set.macro_f1"] == pytest.approx(expected_f1)


def oscr_brute_force(known: np.ndarray, correct: np.ndarray, ood: np.ndarray) -> float:
    """Dhamija et al.'s curve walked threshold by threshold: at every distinct score t (and
    below them all) the rates of correct known and OOD images with a score <= t, the area by
    the trapezoid rule; no sorting tricks, no shortcuts."""
    points = [(0.0, 0.0)]
    for t in sorted(set(known.tolist()) | set(ood.tolist())):
        ccr = sum(1 for s, c in zip(known, correct, strict=True) if c and s <= t) / len(known)
        fpr = sum(1 for s in ood if s <= t) / len(ood)
        points.append((fpr, ccr))
    return sum(
        (f1 - f0) * (c0 + c1) / 2
        for (f0, c0), (f1, c1) in zip(points[:-1], points[1:], strict=True)
    )


def oscr_pairs(known: np.ndarray, correct: np.ndarray, ood: np.ndarray) -> float:
    """The same area as a sum over (correct known, OOD) pairs: 1 when the known image scores
    lower, 1/2 when they tie."""
    k = known[correct][:, None]
    pairs = (k < ood[None, :]) + 0.5 * (k == ood[None, :])
    return pairs.sum() / (len(known) * len(ood))


@pytest.mark.parametrize("seed", range(6))
def test_oscr_against_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    known = rng.integers(0, 8, size=40).astype(float)  # 8 values: many ties, across sets too
    ood = rng.integers(3, 12, size=25).astype(float)
    correct = rng.random(40) < 0.8
    ours = oscr(torch.tensor(known), torch.tensor(correct), torch.tensor(ood))
    assert ours == pytest.approx(oscr_brute_force(known, correct, ood), abs=1e-12)
    assert ours == pytest.approx(oscr_pairs(known, correct, ood), abs=1e-12)


def test_oscr_ties_count_one_half_and_all_wrong_gives_zero():
    known, ood = torch.tensor([1.0, 2.0]), torch.tensor([2.0])
    # the correct image at 2 ties the OOD image: half a pair; the one at 1 a whole pair
    assert oscr(known, torch.tensor([True, True]), ood) == pytest.approx((1 + 0.5) / 2)
    assert oscr(known, torch.tensor([False, True]), ood) == pytest.approx(0.5 / 2)
    assert oscr(known, torch.tensor([False, False]), ood) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_oscr_is_accuracy_times_auroc_of_correct_known_vs_ood_without_ties(seed):
    rng = np.random.default_rng(seed)
    known, ood = rng.normal(0, 1, 500), rng.normal(1, 1, 300)
    correct = rng.random(500) < 0.9
    auroc = roc_auc_score(np.r_[np.zeros(correct.sum()), np.ones(300)], np.r_[known[correct], ood])
    ours = oscr(torch.tensor(known), torch.tensor(correct), torch.tensor(ood))
    assert ours == pytest.approx(correct.mean() * auroc, abs=1e-12)
