"""Adversarial Reciprocal Points Learning, without its GAN: logits from reciprocal points."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.objectives.base import Objective


class ARPL(Objective):
    """Reciprocal points learning of Chen et al., "Adversarial Reciprocal Points Learning for
    Open Set Recognition" (TPAMI 2021), without the adversarial (GAN) part; written from the
    paper's equations.

    Each class k has a reciprocal point P_k in feature space (K x D parameters, drawn as
    0.1 * N(0, 1)), the point farthest from the class; R is a learned radius (from 0). For
    features x:

    - d_e(x, P_k) = mean over the D dimensions of (x - P_k)^2, d_d(x, P_k) = x . P_k;
    - logits_k = d_e(x, P_k) - d_d(x, P_k): far from a class's reciprocal point = that class
      (the head is not used, so the module freezes it);
    - loss = CE(logits / temperature, y)
      + weight * mean_i max(d_e(x_i, P_{y_i}) - R + margin, 0),
      the open-space term bounding the known classes' distance to their reciprocal points by
      R. The paper writes it as max(d_e - R, 0); the authors' released code uses a margin
      ranking loss with margin 1, i.e. max(d_e - R + 1, 0), and so does the default here
      (weight 0.1 and temperature 1 are that code's defaults too).

    d_e is taken as differences, not as |x|^2 + |P|^2 - 2 x.P, which loses small distances to
    float32 cancellation. Its score (``arpl``) is minus the largest logit.
    """

    terms = ("ce", "open_space")
    uses_head_as_logits = False
    uses_head = False
    needs_features = True
    score_name = "arpl"

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        weight: float = 0.1,
        temperature: float = 1.0,
        margin: float = 1.0,
    ) -> None:
        super().__init__(num_classes, feature_dim)
        self.weight, self.temperature, self.margin = weight, temperature, margin
        self.points = nn.Parameter(0.1 * torch.randn(num_classes, feature_dim))
        self.radius = nn.Parameter(torch.zeros(1))

    def logits(self, features: Tensor, head: nn.Linear) -> Tensor:
        extent = (features[:, None, :] - self.points).square().mean(dim=2)  # d_e, B x K
        return extent - features @ self.points.T

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(logits / self.temperature, labels)
        extent = (features - self.points[labels]).square().mean(dim=1)  # d_e to the own P
        open_space = (extent - self.radius + self.margin).clamp(min=0).mean()
        return ce + self.weight * open_space, {"ce": ce, "open_space": open_space}

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        return -logits.float().amax(dim=1)
