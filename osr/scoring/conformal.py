"""Split-conformal thresholds: a known-rejection budget alpha kept with a finite-sample
guarantee, for one detector and for the union of several voting detectors.

With n calibration scores exchangeable with a fresh known image's score s, the threshold
t = the k-th smallest of them, k = ceil((n + 1)(1 - alpha)), gives P(s > t) <= alpha
(Vovk et al. 2005; Angelopoulos and Bates 2021, "A gentle introduction to conformal
prediction", section 1). Several voting detectors reject an image when any of them is above
its threshold, so their union is calibrated as one statistic: each detector's score becomes
its rank among the scores of a first part of the calibration images (interpolated between
them, so that ranks rarely tie), the image's statistic is the largest of its ranks, and the
conformal threshold of that statistic is taken on the second part. A rank is an increasing
function of the score, so exceeding the bound is exceeding one score per detector: the union
rule is again one threshold per detector, applied by ``OpenSetModule.decide`` as every other
rule's.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from osr.scoring.thresholds import decision_values
from osr.utils.errors import OSRError

GUARANTEE = (
    "P(a known image is rejected) <= alpha, over the draw of the calibration images and the "
    "image, when the two are exchangeable (drawn from the same distribution)"
)


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the k-th smallest of n calibration scores is the
    threshold. Raises when n is too small for alpha (k > n: no finite threshold keeps it)."""
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # (n + 1)(1 - alpha) exact in decimals
    if k > n:
        raise OSRError(
            f"calibration.alpha={alpha} needs at least {math.ceil(1 / alpha) - 1} calibration "
            f"images, the conformal rule has {n} (with several voting detectors, the share "
            "1 - calibration.rank_fraction of the validation split): raise calibration.alpha "
            "or data.val_size."
        )
    return max(k, 1)


def _kth_smallest(values: Tensor, k: int) -> float:
    return values.double().kthvalue(k).values.item()


def _float32_at_most(value: float) -> float:
    """The largest float32 at most ``value``: a float32 score is above it exactly when it is
    above ``value``, so the module's float32 thresholds decide as the double ones."""
    t = torch.tensor(value, dtype=torch.float64)
    t32 = t.float()
    if t32.double() > t:
        t32 = torch.nextafter(t32, torch.tensor(-math.inf))
    return t32.item()


def smooth_rank(ranked: Tensor, scores: Tensor) -> Tensor:
    """Where each score falls among the sorted scores ``ranked`` (n of them): i at the i-th
    smallest (0-based), linear in between and above the largest. A continuous increasing map,
    so ties between images' largest ranks are as rare as ties between their scores, and the
    union rule keeps alpha exactly rather than below it by a rank's worth."""
    n = len(ranked)
    span = (ranked[-1] - ranked[0]).clamp_min(1e-12)
    below = torch.searchsorted(ranked, scores, side="left")  # how many are strictly below
    lo = ranked[(below - 1).clamp(0, n - 1)]
    hi = ranked[below.clamp(max=n - 1)]
    inside = (below - 1) + (scores - lo) / (hi - lo).clamp_min(1e-300)
    above = (n - 1) + (scores - ranked[-1]) / span
    return torch.where(below == 0, 0.0, torch.where(below == n, above, inside))


def smooth_rank_threshold(ranked: Tensor, bound: float) -> float:
    """The score above which ``smooth_rank`` exceeds ``bound`` (its inverse)."""
    n = len(ranked)
    if bound >= n - 1:
        span = (ranked[-1] - ranked[0]).clamp_min(1e-12)
        return (ranked[-1] + (bound - (n - 1)) * span).item()
    i = int(bound)
    return (ranked[i] + (bound - i) * (ranked[i + 1] - ranked[i])).item()


def union_thresholds(
    scores: Mapping[str, Tensor], alpha: float, ranks_from: Tensor, threshold_from: Tensor
) -> tuple[dict[str, float], dict[str, int]]:
    """Thresholds of the voting detectors whose union rejects a known image with probability
    at most alpha: scores ranked among those of the images ``ranks_from``, the conformal
    threshold of the largest rank set on the images ``threshold_from`` (disjoint)."""
    ranked = {name: s[ranks_from].double().sort().values for name, s in scores.items()}
    largest = torch.stack(
        [smooth_rank(ranked[name], s[threshold_from].double()) for name, s in scores.items()]
    ).amax(0)
    k = conformal_rank(len(threshold_from), alpha)
    bound = largest.kthvalue(k).values.item()  # reject when the largest rank exceeds it
    kept = largest <= bound
    thresholds = {}
    for name, values in ranked.items():
        # no kept image's score is above the exact inverse; rounding in the inverse could put
        # it a hair below the image that sets the bound, which would then be rejected
        below = scores[name][threshold_from].double()[kept].max().item()
        thresholds[name] = _float32_at_most(max(smooth_rank_threshold(values, bound), below))
    return thresholds, {
        "rank_part": len(ranks_from),
        "threshold_part": len(threshold_from),
        "rank": k,
    }


@dataclass
class Conformal:
    """Split-conformal thresholds for a known-rejection budget ``alpha``.

    One voting detector: its threshold is the conformal one of all validation scores. Several:
    the validation split is divided at random (``seed``) into a part that ranks the scores
    (``rank_fraction`` of it) and a part that sets the threshold of the largest rank; the
    union of their votes then rejects a known image with probability at most alpha. ``fit``
    (each detector alone, every non-voting detector) uses all validation scores.
    """

    alpha: float = 0.01
    rank_fraction: float = 0.5
    seed: int = 0
    name: str = "conformal"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise OSRError(
                f"calibration.alpha={self.alpha} must lie in (0, 1), e.g. calibration.alpha=0.01"
            )
        if not 0.0 < self.rank_fraction < 1.0:
            raise OSRError(
                f"calibration.rank_fraction={self.rank_fraction} must lie in (0, 1), e.g. 0.5"
            )

    def fit(self, scores: Tensor) -> float:
        return _kth_smallest(decision_values(scores), conformal_rank(len(scores), self.alpha))

    def fit_union_record(
        self, scores: Mapping[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The voting detectors' thresholds and how they were fitted (for thresholds.json)."""
        scores = {name: decision_values(values) for name, values in scores.items()}
        n = len(next(iter(scores.values())))
        record: dict[str, Any] = {"alpha": self.alpha, "guarantee": GUARANTEE}
        if len(scores) == 1:
            ((name, values),) = scores.items()
            k = conformal_rank(n, self.alpha)
            return {name: _kth_smallest(values, k)}, record | {"threshold_part": n, "rank": k}
        n_ranks = round(self.rank_fraction * n)
        if not 0 < n_ranks < n:
            raise OSRError(
                f"the conformal union of {len(scores)} voting detectors splits the {n} "
                "validation images in two parts; set data.val_size to at least 2."
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        order = order.to(next(iter(scores.values())).device)
        thresholds, sizes = union_thresholds(scores, self.alpha, order[:n_ranks], order[n_ranks:])
        split = (
            f"validation split permuted with seed {self.seed}: the first {n_ranks} images rank "
            f"each detector's scores, the other {n - n_ranks} set the threshold of the largest "
            "rank"
        )
        return thresholds, record | sizes | {"split": split}


# the known-rejection budgets of the operating curve: 0.1% to 10%
CURVE_ALPHAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def curve_rule(calibration: Mapping[str, Any] | None) -> Conformal:
    """The conformal rule of a run's calibration config, or the default one for runs
    calibrated by another rule (their operating curve is what the conformal rule would give
    them). Reads the config rather than instantiating it: a checkpoint's may name a rule
    that has since moved."""
    params = dict(calibration or {})
    if params.pop("_target_", None) != f"{Conformal.__module__}.{Conformal.__name__}":
        return Conformal()
    return Conformal(**params)


def operating_curve(
    rule: Conformal,
    validation: Mapping[str, Tensor],
    sets: Mapping[str, Mapping[str, Tensor]],
    alphas: tuple[float, ...] = CURVE_ALPHAS,
) -> dict[str, Any]:
    """The share of each set's images rejected by the voting detectors' union (``validation``:
    their validation scores) when calibrated by ``rule`` at each alpha: the known test split's
    share is the known rejection, the OOD sets' the unknowns caught. No retraining, no new
    scores; an alpha the validation split is too small for is left out."""
    rows = []
    for alpha in alphas:
        try:
            thresholds, _ = replace(rule, alpha=alpha).fit_union_record(validation)
        except OSRError:
            continue
        rejected = {}
        for name, scores in sets.items():
            # OpenSetModule.decide's rule: a NaN score, never at most its threshold, rejects
            votes = [~(decision_values(scores[s]) <= thresholds[s]) for s in validation]
            rejected[name] = torch.stack(votes).any(0).double().mean().item()
        rows.append({"alpha": alpha, "rejected": rejected})
    return {
        "rule": {k: v for k, v in asdict(rule).items() if k != "alpha"},
        "voting_scores": list(validation),
        "validation_count": len(next(iter(validation.values()))),
        "rows": rows,
    }
