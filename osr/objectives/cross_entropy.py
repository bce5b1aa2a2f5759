"""Cross-entropy and its variants on the linear head's logits: scored by the logit detectors
(msp, max_logit, energy, ...), no score of their own."""

import torch.nn.functional as F
from pytorch_ood import loss as ood_loss
from torch import Tensor, nn

from osr.objectives.base import Objective


class CrossEntropy(Objective):
    """``F.cross_entropy(logits, labels)``: what osr trained with before objectives existed."""

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return F.cross_entropy(logits, labels), {}


class LabelSmoothing(Objective):
    """Cross-entropy against targets smoothed by ``smoothing`` (Szegedy et al., "Rethinking
    the Inception Architecture", 2016, who used 0.1)."""

    def __init__(self, num_classes: int, feature_dim: int, smoothing: float = 0.1) -> None:
        super().__init__(num_classes, feature_dim)
        self.smoothing = smoothing

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return F.cross_entropy(logits, labels, label_smoothing=self.smoothing), {}


class LogitNorm(Objective):
    """pytorch-ood's ``LogitNorm``: cross-entropy of the logits scaled to norm 1/t.

    t=0.04 is the value Wei et al. ("Mitigating Neural Network Overconfidence with Logit
    Normalization", ICML 2022) use on CIFAR-10; pytorch-ood's default, 1, leaves the softmax
    nearly flat. Only training changes: the logits scored are the head's, unnormalized.
    """

    def __init__(self, num_classes: int, feature_dim: int, t: float = 0.04) -> None:
        super().__init__(num_classes, feature_dim)
        self.criterion = ood_loss.LogitNorm(t=t)

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.criterion(logits, labels), {}
