"""The objective interface: what a model is trained to minimize, the logits it classifies
with, and the unknown-ness score that comes with it."""

from collections.abc import Mapping

from torch import Tensor, nn

from osr.utils.errors import OSRError


def squared_distances(points: Tensor, centers: Tensor) -> Tensor:
    """B x K squared Euclidean distances of B points to K centers.

    Taken as differences, not by expanding |x|^2 + |c|^2 - 2 x.c (as pytorch-ood's
    ``pairwise_distances`` does), which in float32 loses the small distances of points near
    their center to cancellation (see ``osr.detectors.ClassDistance``). The B x K x D
    intermediate is small for the K classes and D features here.
    """
    return (points[:, None, :] - centers).square().sum(dim=2)


class Objective(nn.Module):
    """A training objective, built as ``Objective(num_classes, feature_dim, **hyperparameters)``
    by the LightningModule (``num_classes`` known classes, ``feature_dim`` penultimate
    features, i.e. ``head.in_features``).

    Subclasses set:

    - ``terms``: the names of the parts of the loss that ``loss`` reports (logged as
      ``train/<term>``, ``val/<term>``), the same for every batch;
    - ``uses_head_as_logits``: whether the logits are the linear head's output. When not, the
      module does not hand the head to detectors (ViM, ReAct, DICE, ASH and fDBD assume
      ``head(features)`` are the logits);
    - ``uses_head``: whether ``logits`` or ``loss`` read the head at all. A head they do not
      read is frozen by the module: DDP refuses trainable parameters that get no gradient;
    - ``needs_features``: whether ``logits`` or ``loss`` read the penultimate features. When
      not, a training step takes the logits from the network's own forward (as compiled by
      ``model.compile``) and ``loss`` gets ``features=None``;
    - ``score_name``: the name of the objective's own unknown-ness score (``score``), a
      detector the module adds to every detector set; None when that score is the max logit
      or softmax, which ``max_logit`` and ``msp`` already give.

    Parameters and buffers of an objective are the module's: trained by its optimizer, saved
    in its ``state_dict``. One without any adds no ``state_dict`` keys. What an objective
    estimates after training (``fit_after_training``) travels beside them in checkpoints
    (``fitted_state``), as the detectors' fitted state does.
    """

    terms: tuple[str, ...] = ()
    uses_head_as_logits: bool = True
    uses_head: bool = True
    needs_features: bool = False
    score_name: str | None = None

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim

    def logits(self, features: Tensor, head: nn.Linear) -> Tensor:
        """B x K class logits (argmax = predicted class) of B penultimate feature vectors."""
        return head(features)

    def loss(
        self, features: Tensor | None, logits: Tensor, labels: Tensor, head: nn.Linear
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The batch's loss and its named parts (``terms``), from ``logits(features, head)``.

        ``head`` is there for objectives whose loss reads the head's output when their logits
        are something else (II loss: its embedding).
        """
        raise NotImplementedError

    def start_epoch(self) -> None:
        """Called at the start of every training epoch (e.g. to restart running estimates)."""

    @property
    def is_fitted(self) -> bool:
        """Whether what ``logits`` and ``score`` read is ready; False until
        ``fit_after_training`` for an objective that estimates it after training."""
        return True

    def fit_after_training(self, features: Tensor, labels: Tensor, head: nn.Linear) -> None:
        """Estimate what ``logits`` and ``score`` read from the trained networks: called, when
        ``is_fitted`` is False, with the penultimate features (eval mode) and labels of every
        image of the known training split, gathered from every DDP rank, before the detectors
        are fitted on that split (``osr.scoring.outputs.fit_detectors``)."""

    def fitted_state(self) -> dict[str, Tensor]:
        """What ``fit_after_training`` estimated, as plain tensors for a checkpoint (empty
        when nothing was)."""
        return {}

    def load_fitted_state(self, state: Mapping[str, Tensor]) -> None:
        """Take back what ``fitted_state`` returned (empty: not fitted)."""
        if state:
            raise OSRError(
                f"the checkpoint holds a fitted state {sorted(state)} for "
                f"{type(self).__name__}, which fits nothing after training."
            )

    def score(self, features: Tensor, logits: Tensor) -> Tensor:
        """One unknown-ness score per image (higher = more unknown)."""
        raise OSRError(
            f"{type(self).__name__} has no score of its own: its logits are scored by the "
            "detectors (msp, max_logit, ...)."
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feature_dim={self.feature_dim}"
