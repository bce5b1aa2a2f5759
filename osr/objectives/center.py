"""Cross-entropy plus pytorch-ood's center loss on the penultimate features."""

import torch.nn.functional as F
from pytorch_ood import loss as ood_loss
from torch import Tensor, nn

from osr.objectives.base import Objective, squared_distances


class CenterLoss(Objective):
    """``CE(head(features), y) + weight * CenterLoss``, after Wen et al., "A Discriminative
    Feature Learning Approach for Deep Face Recognition" (ECCV 2016).

    The class centers (K x D, drawn from a standard normal) are pytorch-ood's ``CenterLoss``
    parameters, trained by the module's optimizer with the networks rather than by the
    paper's separate update rule. pytorch-ood averages the squared distance to the own
    center over the batch and the K classes, so each image weighs ``weight / K``: with 0.1
    (this project's choice, not the paper's), 0.01 for ten classes, the order of the small
    weights Wen et al. report (0.003 for faces).

    Its score (``center``) is the squared distance to the nearest center.
    """

    terms = ("ce", "center")
    needs_features = True
    score_name = "center"

    def __init__(self, num_classes: int, feature_dim: int, weight: float = 0.1) -> None:
        super().__init__(num_classes, feature_dim)
        self.weight = weight
        self.criterion = ood_loss.CenterLoss(n_classes=num_classes, n_dim=feature_dim)

    @property
    def centers(self) -> Tensor:
        return self.criterion.centers.params

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(logits, labels)
        center = self.criterion(squared_distances(features, self.centers), labels)
        return ce + self.weight * center, {"ce": ce, "center": center}

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        return squared_distances(features.float(), self.centers.float()).amin(dim=1)
