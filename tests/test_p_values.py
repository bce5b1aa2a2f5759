"""Conformal p-values and the Benjamini-Hochberg batch rule: p <= alpha is the conformal rule,
BH is scipy's, and the false-discovery rate stays at most q over many simulated batches."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control

from osr.scoring.conformal import Conformal
from osr.scoring.p_values import benjamini_hochberg, p_values
from osr.utils.errors import OSRError
from tests.test_conformal import correlated_scores


@pytest.mark.parametrize("m", [1, 3])
def test_a_p_value_at_most_alpha_is_a_rejection_by_the_thresholds(m):
    g = torch.Generator().manual_seed(m)
    for draw in range(20):
        scores = correlated_scores(m, 3000, g)
        cal = {name: s[:1000] for name, s in scores.items()}
        new = {name: s[1000:] for name, s in scores.items()}
        for alpha in (0.01, 0.05, 0.2):
            rule = Conformal(alpha=alpha, seed=draw)
            thresholds, _ = rule.fit_union_record(cal)
            rejected = torch.zeros(2000, dtype=torch.bool)
            for name, s in new.items():
                rejected |= s > torch.tensor(thresholds[name], dtype=torch.float32)
            p = p_values(rule.reference(cal), new)
            assert torch.equal(p <= alpha, rejected), (draw, alpha)
    assert p.min() >= 1 / 1001 and p.max() <= 1.0


def test_a_nan_score_gets_the_smallest_p_value():
    g = torch.Generator().manual_seed(0)
    cal = correlated_scores(2, 500, g)
    reference = Conformal().reference(cal)
    new = {name: s[:3].clone() for name, s in correlated_scores(2, 3, g).items()}
    new["s1"][1] = math.nan
    p = p_values(reference, new)
    n = len(reference["statistic"])
    assert p[1].item() == 1 / (n + 1) and not p.isnan().any()


def test_benjamini_hochberg_is_scipys():
    g = torch.Generator().manual_seed(0)
    for m in (1, 7, 300):
        for q in (0.05, 0.1, 0.3):
            p = torch.rand(m, generator=g, dtype=torch.float64) ** 3
            expected = false_discovery_control(p.numpy(), method="bh") <= q
            assert np.array_equal(benjamini_hochberg(p, q).numpy(), expected), (m, q)
    assert not benjamini_hochberg(torch.ones(5, dtype=torch.float64), 0.1).any()
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(OSRError, match=rf"fdr={bad} must lie in \(0, 1\)"):
            benjamini_hochberg(torch.ones(2), bad)


def test_the_false_discovery_rate_stays_at_most_q():
    """500 batches of 150 known and 50 unknown images, each against its own calibration draw
    of 1000 known images, two voting detectors: the mean share of known images among those
    called unknown is at most q (BH on conformal p-values; Bates et al. 2023, Theorem 3)."""
    q, batches, known, unknown = 0.1, 500, 150, 50
    g = torch.Generator().manual_seed(5)
    fdp, found = [], []
    for draw in range(batches):
        scores = correlated_scores(2, 1000 + known + unknown, g)
        cal = {name: s[:1000] for name, s in scores.items()}
        batch = {name: s[1000:].clone() for name, s in scores.items()}
        batch["s0"][known:] += 2.5  # the unknowns score higher on one detector
        rejected = benjamini_hochberg(p_values(Conformal(seed=draw).reference(cal), batch), q)
        false = rejected[:known].sum().item()
        fdp.append(false / max(rejected.sum().item(), 1))
        found.append(rejected[known:].float().mean().item())
    fdp = np.array(fdp)
    standard_error = fdp.std(ddof=1) / math.sqrt(batches)
    assert fdp.mean() <= q + 2 * standard_error
    assert np.mean(found) > 0.3  # and it does find unknowns
