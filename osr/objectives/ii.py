"""II loss: logits are negative distances to running class means of an embedding."""

from pytorch_ood import loss as ood_loss
from torch import Tensor, nn

from osr.objectives.base import Objective, squared_distances


class IILoss(Objective):
    """pytorch-ood's ``IILoss`` (Hassen & Chan, "Learning a Neural-network-based
    Representation for Open Set Recognition", SDM 2020) on the K-dimensional output of the
    head: intra-class spread minus ``alpha`` times the smallest distance between class means
    (alpha 1, the paper's unweighted difference and pytorch-ood's default).

    The class means are pytorch-ood's running estimates, buffers updated by every training
    batch, so they travel in the module's ``state_dict``. Logits are the negative squared
    distances of the embedding to them; the score (``ii``) is the smallest such distance.
    pytorch-ood averages every batch since the estimate started with equal weight, while the
    loss, unbounded below (the separation term grows with the embedding's scale), keeps
    moving the embedding: the estimate is restarted (pytorch-ood's ``reset``) at the start of
    every training epoch, so that the means scored with are those of the last epoch, near the
    paper's class means of the training data after training. pytorch-ood needs two classes
    in every training batch: with one, its inter-class term is -1e24 (no gradient).
    """

    uses_head_as_logits = False
    needs_features = True
    score_name = "ii"

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 1.0) -> None:
        super().__init__(num_classes, feature_dim)
        self.criterion = ood_loss.IILoss(
            n_classes=num_classes, n_embedding=num_classes, alpha=alpha
        )

    @property
    def means(self) -> Tensor:
        return self.criterion.centers.centers

    def logits(self, features: Tensor, head: nn.Linear) -> Tensor:
        return -squared_distances(head(features), self.means)

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.criterion(head(features), labels)
        # pytorch-ood writes the batch means, with their autograd graph, into the running
        # means; detached, the buffer no longer holds every past step's graph alive
        running = self.criterion.centers
        running.running_centers = running.running_centers.detach()
        return loss, {}

    def start_epoch(self) -> None:
        self.criterion.centers.reset()

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        return -logits.float().amax(dim=1)
