"""Conformal p-values of the voting statistic and Benjamini-Hochberg decisions on a batch.

An image's p-value is (1 + the number of calibration images whose voting statistic is at
least its own) / (n + 1), against the images that set the conformal threshold
(``Conformal.reference``): under exchangeability with the calibration images a known image's
p-value is super-uniform, so rejecting p <= alpha is the conformal rule itself. Conformal
p-values of a batch are positively dependent (PRDS), so Benjamini-Hochberg at level q keeps
the expected share of known images among those called UNKNOWN at most q (Bates, Candes, Lei,
Romano and Sesia, "Testing for outliers with conformal p-values", Ann. Statist. 2023).
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from osr.scoring.conformal import largest_rank
from osr.scoring.thresholds import decision_values
from osr.utils.errors import OSRError


def voting_statistic(reference: Mapping[str, Any], scores: Mapping[str, Tensor]) -> Tensor:
    """Each image's voting statistic (higher = more unknown; a NaN score gives +inf)."""
    voting = {name: decision_values(scores[name]).cpu() for name in reference["voting"]}
    if reference["ranked"]:
        statistic = largest_rank(reference["ranked"], voting)
    else:
        (statistic,) = voting.values()
    return torch.nan_to_num(statistic.double(), nan=torch.inf)


def p_values(reference: Mapping[str, Any], scores: Mapping[str, Tensor]) -> Tensor:
    """The conformal p-value of each image (float64, in [1 / (n + 1), 1])."""
    calibration = reference["statistic"]
    n = len(calibration)
    at_least = n - torch.searchsorted(calibration, voting_statistic(reference, scores))
    return (1 + at_least).double() / (n + 1)


def check_fdr(q: float) -> None:
    if not (isinstance(q, float | int) and 0.0 < q < 1.0):
        raise OSRError(f"fdr={q} must lie in (0, 1), e.g. fdr=0.1, or be null (no batch rule)")


def benjamini_hochberg(p: Tensor, q: float) -> Tensor:
    """True for the images Benjamini-Hochberg rejects at false-discovery rate q: those whose
    p-value is at most the largest p_(j) with p_(j) <= q j / m."""
    check_fdr(q)
    m = len(p)
    ordered = p.sort().values
    passing = ordered <= q * torch.arange(1, m + 1, dtype=p.dtype) / m
    if not passing.any():
        return torch.zeros(m, dtype=torch.bool)
    cut = ordered[passing.nonzero().max()]
    return p <= cut
