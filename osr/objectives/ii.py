"""II loss: logits are negative distances to the class means of an embedding."""

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.objectives.base import Objective, squared_distances
from osr.utils.errors import OSRError

# what an absent pair of classes counts as in the smallest distance between class means (the
# value pytorch-ood uses on its diagonal): a batch of one class has no separation term
FAR = 1e24


class IILoss(Objective):
    """II loss (Hassen & Chan, "Learning a Neural-network-based Representation for Open Set
    Recognition", SDM 2020) on the K-dimensional output z of the head, written from the paper
    as pytorch-ood's ``IILoss`` computes it: intra-class spread minus ``alpha`` times the
    smallest squared distance between the means of the classes in the batch,

        loss = (1/N) sum_i ||z_i - mu_{y_i}||^2 - alpha * min_{j != k} ||mu_j - mu_k||^2,

    mu the batch's class means (alpha 1, the paper's unweighted difference). Logits are the
    negative squared distances to the class means; the score (``ii``) is the smallest
    distance.

    The class means scored with are, as in the authors' code, those of the embeddings of
    every known training image after training, in eval mode (``fit_after_training``, run
    before the detectors are fitted; ``fitted_means``, saved in checkpoints beside the
    detectors' fitted state). Until then (during training, for the validation logits, and in
    checkpoints written before) they are running means of the training batches since the
    epoch started, counted per class: a sum and a count per class (buffers, in the
    ``state_dict``), so a class missing from some batches is averaged over its own images
    only. pytorch-ood 0.4.0's running centers keep one batch counter for all classes, which
    shrinks the mean of a class absent from the first batches toward zero. The running means
    restart every epoch (the loss, unbounded below, keeps moving the embedding), and so do
    the fitted ones.

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
        # K x K, set by fit_after_training; out of the state_dict, so that fitting leaves the
        # weights a checkpoint was saved with as they were (osr.utils.checkpoints)
        self.register_buffer("fitted_means", None, persistent=False)

    @property
    def means(self) -> Tensor:
        """K x K: each class's mean embedding, fitted after training, else over the training
        images seen since the epoch started (zeros for a class not seen yet)."""
        if self.fitted_means is not None:
            return self.fitted_means
        return self.sums / self.counts.clamp(min=1)[:, None]

    def embed(self, features: Tensor, head: nn.Linear, track: bool = True) -> Tensor:
        """z: the head's output, batch-normalized. ``track``: update the running statistics
        (once per training step: ``logits`` does, ``loss`` does not)."""
        h = head(features).float()
        norm = self.embedding_norm
        if not self.training or len(h) == 1:  # eval, or a batch without statistics
            return F.batch_norm(h, norm.running_mean, norm.running_var, eps=norm.eps)
        if not track:
            return F.batch_norm(h, None, None, training=True, eps=norm.eps)
        return norm(h)

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
        self.fitted_means = None  # training moves the embedding again

    @property
    def is_fitted(self) -> bool:
        return self.fitted_means is not None

    def fit_after_training(self, features: Tensor, labels: Tensor, head: nn.Linear) -> None:
        """The class means of the eval-mode embeddings of the known training split."""
        was_training = self.training
        self.eval()
        z = self.embed(features, head)
        self.train(was_training)
        sums = z.new_zeros(self.num_classes, z.shape[1]).index_add_(0, labels, z)
        counts = torch.bincount(labels, minlength=self.num_classes).clamp(min=1)
        self.fitted_means = sums / counts[:, None].to(z.dtype)

    def fitted_state(self) -> dict[str, Tensor]:
        return {} if self.fitted_means is None else {"means": self.fitted_means.detach()}

    def load_fitted_state(self, state: Mapping[str, Tensor]) -> None:
        if set(state) - {"means"}:
            raise OSRError(
                f"the checkpoint holds a fitted state {sorted(state)} for IILoss, which keeps "
                "only its class means ('means')."
            )
        means = state.get("means")
        self.fitted_means = None if means is None else means.to(self.sums.device)

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        return -logits.float().amax(dim=1)
