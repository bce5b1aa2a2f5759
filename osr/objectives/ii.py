"""II loss: logits are negative distances to running class means of an embedding."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.objectives.base import Objective, squared_distances

# what an absent pair of classes counts as in the smallest distance between class means (the
# value pytorch-ood uses on its diagonal): a batch of one class has no separation term
FAR = 1e24


class IILoss(Objective):
    """II loss (Hassen & Chan, "Learning a Neural-network-based Representation for Open Set
    Recognition", SDM 2020) on the K-dimensional output z of the head, written from the paper
    as pytorch-ood's ``IILoss`` computes it: intra-class spread minus ``alpha`` times the
    smallest squared distance between the means of the classes in the batch,

        loss = (1/N) sum_i ||z_i - mu_{y_i}||^2 - alpha * min_{j != k} ||mu_j - mu_k||^2,

    mu the batch's class means (alpha 1, the paper's unweighted difference). The class means
    scored with are those of every training image since the epoch started, counted per
    class: a sum and a count per class (buffers, in the ``state_dict``), so a class missing
    from some batches is averaged over its own images only. pytorch-ood 0.4.0's running
    centers keep one batch counter for all classes, which shrinks the mean of a class absent
    from the first batches toward zero. The means restart every epoch (the loss, unbounded
    below, keeps moving the embedding), so those scored with are the last epoch's. Logits are
    the negative squared distances to them; the score (``ii``) is the smallest distance.

    z is the head's output batch-normalized (``embedding_norm``, no scale), as in the authors'
    code (github.com/shrtCKT/opennet: "It is very important to batch normalize the output of
    encoder"): without it the loss, unbounded below, grows the embedding's scale until the
    classes collapse (17% closed-set accuracy on MNIST 6/4 with the stronger recipe). The
    authors' learned shift is left out: it moves every z alike and changes no distance.
    Training batches are normalized with their own statistics (a batch of one image, which
    has none, with the running ones), evaluation with the running statistics.
    """

    uses_head_as_logits = False
    needs_features = True
    score_name = "ii"

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 1.0) -> None:
        super().__init__(num_classes, feature_dim)
        self.alpha = alpha
        self.embedding_norm = nn.BatchNorm1d(num_classes, affine=False)
        self.register_buffer("sums", torch.zeros(num_classes, num_classes))
        self.register_buffer("counts", torch.zeros(num_classes))

    @property
    def means(self) -> Tensor:
        """K x K: each class's mean embedding over the images seen since the epoch started
        (zeros for a class not seen yet)."""
        return self.sums / self.counts.clamp(min=1)[:, None]

    def embed(self, features: Tensor, head: nn.Linear, track: bool = True) -> Tensor:
        """z: the head's output, batch-normalized. ``track``: update the running statistics
        (once per training step: ``logits`` does, ``loss`` does not)."""
        h = head(features).float()
        if self.training and len(h) > 1 and not track:
            return F.batch_norm(h, None, None, training=True, eps=self.embedding_norm.eps)
        if self.training and len(h) == 1:
            return F.batch_norm(
                h,
                self.embedding_norm.running_mean,
                self.embedding_norm.running_var,
                training=False,
                eps=self.embedding_norm.eps,
            )
        return self.embedding_norm(h)

    def logits(self, features: Tensor, head: nn.Linear) -> Tensor:
        z = self.embed(features, head)
        return -squared_distances(z, self.means.to(z.dtype))

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.embed(features, head, track=False)
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)  # B x K
        sums, counts = onehot.T @ z, onehot.sum(dim=0)
        batch_means = sums / counts.clamp(min=1)[:, None]
        intra = (z - batch_means[labels]).square().sum() / len(z)
        present = counts > 0
        apart = squared_distances(batch_means, batch_means)
        same = torch.eye(len(counts), dtype=torch.bool, device=z.device)
        inter = apart.masked_fill(~(present[:, None] & present[None, :]) | same, FAR).amin()
        if self.training:
            with torch.no_grad():
                self.sums += sums
                self.counts += counts
        return intra - self.alpha * inter, {}

    def start_epoch(self) -> None:
        self.sums.zero_()
        self.counts.zero_()

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        return -logits.float().amax(dim=1)
