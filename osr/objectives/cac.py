"""Class Anchor Clustering: logits are negative distances to fixed class anchors."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.objectives.base import Objective


def distances(points: Tensor, centers: Tensor) -> Tensor:
    """B x K Euclidean distances of B points to K centers, taken as differences (see
    ``squared_distances``); the gradient at a zero distance is 0."""
    return torch.linalg.vector_norm(points[:, None, :] - centers, dim=2)


class CACLoss(Objective):
    """Class Anchor Clustering (Miller et al., WACV 2021), written from the paper's equations
    and checked against the authors' code (``cac-openset``): on the K-dimensional output z of
    the head, with fixed anchors c_k = magnitude * one-hot(k) and the Euclidean distances
    d_k = ||z - c_k||,

    - logits = -d (the nearest anchor is the predicted class);
    - loss = alpha * d_y + log(1 + sum_{k != y} exp(d_y - d_k)), averaged over the batch: the
      anchor term (weight alpha, the paper's lambda) and the tuplet term, which is the
      cross-entropy of the logits -d;
    - score (``cac``): the paper's rejection score min_k d_k * (1 - softmin(d)_k), as its
      logarithm (the same ranking; in log space 1 - softmin cannot round to 0 for a point
      near one anchor and far from the others).

    Defaults are the paper's: magnitude 10, alpha 0.1.
    """

    terms = ("anchor", "tuplet")
    uses_head_as_logits = False
    needs_features = True
    score_name = "cac"

    def __init__(
        self, num_classes: int, feature_dim: int, magnitude: float = 10.0, alpha: float = 0.1
    ) -> None:
        super().__init__(num_classes, feature_dim)
        self.magnitude, self.alpha = magnitude, alpha
        self.register_buffer("anchors", magnitude * torch.eye(num_classes), persistent=False)

    def logits(self, features: Tensor, head: nn.Linear) -> Tensor:
        return -distances(head(features), self.anchors.to(features.dtype))

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        anchor = (-logits).gather(1, labels[:, None]).mean()
        tuplet = F.cross_entropy(logits, labels)
        return self.alpha * anchor + tuplet, {"anchor": anchor, "tuplet": tuplet}

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        return log_rejection_score(-logits.float()).amin(dim=1)


def log_rejection_score(distances: Tensor) -> Tensor:
    """B x K: log(d_c * (1 - softmin(d)_c)), with 1 - softmin(d)_c = sum over j != c of
    softmin(d)_j, each in log space. Distances are floored at 1e-12, so that a point on its
    anchor scores finitely (about -27.6) rather than -inf."""
    k = distances.shape[1]
    own = torch.eye(k, dtype=torch.bool, device=distances.device)
    # B x K x K: row c holds -d_j for every j != c
    others = (-distances).unsqueeze(1).expand(-1, k, -1).masked_fill(own, float("-inf"))
    log_not_c = others.logsumexp(dim=2) - (-distances).logsumexp(dim=1, keepdim=True)
    return distances.clamp(min=1e-12).log() + log_not_c
