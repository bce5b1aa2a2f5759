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

With ``delta`` set, the guarantee holds for the calibration set drawn rather than on average
over draws (calibration-conditional, "PAC"): the share of known images rejected given the
calibration images is Beta(n + 1 - k, k)-distributed over draws (Vovk 2012, "Conditional
validity of inductive conformal predictors"), so the rank is raised to the smallest k with
P(Beta(k, n + 1 - k) < 1 - alpha) <= delta.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from scipy.special import betainc
from torch import Tensor

from osr.scoring.thresholds import decision_values
from osr.utils.errors import OSRError

EXCHANGEABLE = (
    "when the calibration images and the known image are exchangeable (drawn from the same "
    "distribution, the calibration images used for nothing else)"
)


def guarantee(alpha: float, delta: float | None) -> str:
    """The guarantee a conformal threshold gives, in words (thresholds.json, report.md)."""
    if delta is None:
        return (
            f"P(a known image is rejected) <= {alpha}, on average over the draw of the "
            f"calibration images and the image, {EXCHANGEABLE}"
        )
    return (
        f"with probability at least {1 - delta:g} over the draw of the calibration images, "
        f"P(a known image is rejected | those images) <= {alpha}, {EXCHANGEABLE}"
    )


def coverage_shortfall(k: int, n: int, alpha: float) -> float:
    """P(Beta(k, n + 1 - k) < 1 - alpha): the probability over calibration draws that the
    k-th smallest of n scores keeps less than 1 - alpha of known images."""
    return float(betainc(k, n + 1 - k, 1 - alpha))


def images_needed(alpha: float, delta: float | None) -> int:
    """The fewest calibration images for which some rank keeps the guarantee (k = n)."""
    if delta is None:
        return math.ceil(1 / alpha - 1e-9) - 1
    return math.ceil(math.log(delta) / math.log1p(-alpha) - 1e-9)  # (1 - alpha)^n <= delta


def conformal_rank(n: int, alpha: float, delta: float | None = None) -> int:
    """The rank k whose k-th smallest of n calibration scores is the threshold: ceil((n + 1)
    (1 - alpha)), or with ``delta`` the smallest k with P(Beta(k, n + 1 - k) < 1 - alpha) <=
    delta. Raises when n is too small (k > n: no finite threshold keeps the guarantee)."""
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # (n + 1)(1 - alpha) exact in decimals
    if delta is not None and k <= n:
        lo, hi = max(k, 1), n + 1  # the shortfall falls as k grows: bisect for the first k
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if coverage_shortfall(mid, n, alpha) <= delta else (mid + 1, hi)
        k = lo
    if k > n:
        asked = f"calibration.alpha={alpha}" + (f" with delta={delta}" if delta else "")
        raise OSRError(
            f"{asked} needs at least {images_needed(alpha, delta)} calibration images, the "
            f"conformal rule has {n} (with several voting detectors, the share "
            "1 - calibration.rank_fraction of the calibration split): raise calibration.alpha "
            "(or calibration.delta), or data.calibration_size."
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


def largest_rank(ranked: Mapping[str, Tensor], scores: Mapping[str, Tensor]) -> Tensor:
    """The union's statistic: each image's largest ``smooth_rank`` over the detectors."""
    return torch.stack([smooth_rank(ranked[name], s.double()) for name, s in scores.items()]).amax(
        0
    )


def union_thresholds(
    scores: Mapping[str, Tensor],
    alpha: float,
    ranks_from: Tensor,
    threshold_from: Tensor,
    delta: float | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """Thresholds of the voting detectors whose union rejects a known image with probability
    at most alpha: scores ranked among those of the images ``ranks_from``, the conformal
    threshold of the largest rank set on the images ``threshold_from`` (disjoint)."""
    ranked = {name: s[ranks_from].double().sort().values for name, s in scores.items()}
    largest = largest_rank(ranked, {name: s[threshold_from] for name, s in scores.items()})
    k = conformal_rank(len(threshold_from), alpha, delta)
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

    One voting detector: its threshold is the conformal one of all calibration scores. Several:
    the calibration split is divided at random (``seed``) into a part that ranks the scores
    (``rank_fraction`` of it) and a part that sets the threshold of the largest rank; the
    union of their votes then rejects a known image with probability at most alpha. ``fit``
    (each detector alone, every non-voting detector) uses all calibration scores.
    """

    alpha: float = 0.01
    delta: float | None = None
    rank_fraction: float = 0.5
    seed: int = 0
    name: str = "conformal"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise OSRError(
                f"calibration.alpha={self.alpha} must lie in (0, 1), e.g. calibration.alpha=0.01"
            )
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise OSRError(
                f"calibration.delta={self.delta} must lie in (0, 1), e.g. calibration.delta=0.05, "
                "or be null (the guarantee on average over calibration draws)"
            )
        if not 0.0 < self.rank_fraction < 1.0:
            raise OSRError(
                f"calibration.rank_fraction={self.rank_fraction} must lie in (0, 1), e.g. 0.5"
            )

    def fit(self, scores: Tensor) -> float:
        k = conformal_rank(len(scores), self.alpha, self.delta)
        return _kth_smallest(decision_values(scores), k)

    def fit_union_record(
        self, scores: Mapping[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The voting detectors' thresholds and how they were fitted (for thresholds.json)."""
        scores = {name: decision_values(values) for name, values in scores.items()}
        n = len(next(iter(scores.values())))
        record: dict[str, Any] = {
            "alpha": self.alpha,
            "delta": self.delta,
            "guarantee": guarantee(self.alpha, self.delta),
        }
        ((name, values), *more) = scores.items()
        if not more:
            k = conformal_rank(n, self.alpha, self.delta)
            return {name: _kth_smallest(values, k)}, record | {"threshold_part": n, "rank": k}
        ranks_from, threshold_from = self.parts(n, len(scores))
        thresholds, sizes = union_thresholds(
            scores,
            self.alpha,
            ranks_from.to(values.device),
            threshold_from.to(values.device),
            self.delta,
        )
        split = (
            f"calibration split permuted with seed {self.seed}: the first {len(ranks_from)} "
            f"images rank each detector's scores, the other {len(threshold_from)} set the "
            "threshold of the largest rank"
        )
        return thresholds, record | sizes | {"split": split}

    def parts(self, n: int, detectors: int) -> tuple[Tensor, Tensor]:
        """The union's two parts of n calibration images: those that rank each detector's
        scores, those that set the threshold of the largest rank (disjoint, drawn with seed)."""
        n_ranks = round(self.rank_fraction * n)
        if not 0 < n_ranks < n:
            raise OSRError(
                f"the conformal union of {detectors} voting detectors splits the {n} "
                "calibration images in two parts; set data.calibration_size to at least 2."
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return order[:n_ranks], order[n_ranks:]

    def reference(self, scores: Mapping[str, Tensor]) -> dict[str, Any]:
        """What conformal p-values of new images are computed against (``osr.scoring.
        p_values``): the voting statistic of the images that set the threshold, sorted, and
        for a union the sorted scores that rank each detector; the same parts as the
        thresholds, so that p <= alpha exactly when the marginal rule rejects."""
        scores = {name: decision_values(values).cpu() for name, values in scores.items()}
        voting = list(scores)
        if len(scores) == 1:
            (values,) = scores.values()
            return {"voting": voting, "ranked": {}, "statistic": values.double().sort().values}
        ranks_from, threshold_from = self.parts(len(next(iter(scores.values()))), len(scores))
        ranked = {name: s[ranks_from].double().sort().values for name, s in scores.items()}
        statistic = largest_rank(ranked, {name: s[threshold_from] for name, s in scores.items()})
        return {"voting": voting, "ranked": ranked, "statistic": statistic.sort().values}
