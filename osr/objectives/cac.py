"""Class Anchor Clustering: logits are negative distances to fixed class anchors."""

import torch
import torch.nn.functional as F
from pytorch_ood import loss as ood_loss
from torch import Tensor, nn

from osr.objectives.base import Objective, squared_distances


class CACLoss(Objective):
    """Class Anchor Clustering (Miller et al., WACV 2021) on the K-dimensional output of the
    head: the anchors are pytorch-ood's ``CACLoss`` ones, fixed one-hot vectors scaled by
    ``magnitude``; logits are the negative squared distances to them.

    loss = alpha * d_y + log(1 + sum_{c != y} exp(d_y - d_c)), the paper's equation (anchor
    and tuplet terms), with the squared distances d that pytorch-ood uses (the authors' code
    uses Euclidean ones). The tuplet term is the cross-entropy of the logits -d. It is
    computed here rather than by ``CACLoss.forward``: pytorch-ood 0.4.0 gathers the "other"
    distances with a mask that never matches (``target == n_classes``), so for every class
    but the last the sum holds exp(0) for the own class instead of the last class's term.
    Defaults are the paper's: magnitude 10, alpha (its lambda) 0.1.

    Its score (``cac``) is the log of the paper's rejection score, min over classes of
    d * (1 - softmin(d)): the same ranking, but computed in log space, since squared distances
    that differ by hundreds make 1 - softmin(d) of the nearest anchor round to 0 in float32
    (every confidently known image would score 0). pytorch-ood 0.4.0's ``CACLoss.score``
    returns -max of d * (1 - softmin(d)) instead, which ranks a point far from every anchor
    as known.
    """

    terms = ("anchor", "tuplet")
    uses_head_as_logits = False
    needs_features = True
    score_name = "cac"

    def __init__(
        self, num_classes: int, feature_dim: int, magnitude: float = 10.0, alpha: float = 0.1
    ) -> None:
        super().__init__(num_classes, feature_dim)
        self.criterion = ood_loss.CACLoss(n_classes=num_classes, magnitude=magnitude, alpha=alpha)

    @property
    def anchors(self) -> Tensor:
        return self.criterion.centers.params

    def logits(self, features: Tensor, head: nn.Linear) -> Tensor:
        return -squared_distances(head(features), self.anchors)

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        anchor = (-logits).gather(1, labels[:, None]).mean()
        tuplet = F.cross_entropy(logits, labels)
        return self.criterion.alpha * anchor + tuplet, {"anchor": anchor, "tuplet": tuplet}

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
