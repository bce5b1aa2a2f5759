"""The detector interface: what a model hands to detectors, and what a detector does with it.

A detector turns a batch of model outputs into one unknown-ness score per image (higher =
more unknown). Some are fitted first, on the known training split's outputs and labels; their
fitted state is a dict of plain tensors, so it travels in a checkpoint that
``torch.load(weights_only=True)`` still reads.
"""

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from osr.utils.errors import OSRError

if TYPE_CHECKING:
    from osr.objectives import Objective

# What a detector may need of the model, by the ModelOutputs field that carries it:
# images (the model's input), logits, features (penultimate activations), recon (the
# autoencoder's reconstruction), head (the last layer: weight, bias, features -> logits) and
# classify (images -> logits, differentiable, for input-gradient detectors such as ODIN) and
# objective (the training objective, for its own score: ``osr.objectives.Objective.score``).
OUTPUTS = ("images", "logits", "features", "recon", "head", "classify", "objective")
_PER_IMAGE = ("images", "logits", "features", "recon", "labels")


@dataclass(frozen=True)
class ModelOutputs:
    """One pass of a model over a batch, as detectors read it (see ``model_outputs(x)`` of the
    LightningModules). ``labels`` are only needed to fit."""

    logits: Tensor
    features: Tensor | None = None
    images: Tensor | None = None
    recon: Tensor | None = None
    labels: Tensor | None = None
    head: nn.Linear | None = None
    classify: Callable[[Tensor], Tensor] | None = None
    objective: "Objective | None" = None

    @property
    def provided(self) -> frozenset[str]:
        return frozenset(name for name in OUTPUTS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return len(self.logits)

    def keep(self, names: Collection[str]) -> "ModelOutputs":
        """A copy holding only the per-image tensors in ``names`` (logits and labels always):
        what is worth keeping of each batch when gathering a training split to fit on."""
        dropped = {n: None for n in _PER_IMAGE if n not in {*names, "logits", "labels"}}
        return dataclasses.replace(self, **dropped)

    def subset(self, index: Tensor) -> "ModelOutputs":
        """The rows ``index`` of every per-image tensor."""
        rows = {n: getattr(self, n)[index] for n in _PER_IMAGE if getattr(self, n) is not None}
        return dataclasses.replace(self, **rows)

    @classmethod
    def cat(cls, parts: Sequence["ModelOutputs"]) -> "ModelOutputs":
        """Batches joined along the first dimension; head, classify and objective are the
        first's."""
        if not parts:
            raise ValueError("ModelOutputs.cat needs at least one batch")
        first = parts[0]
        joined = {
            n: torch.cat([getattr(p, n) for p in parts])
            for n in _PER_IMAGE
            if getattr(first, n) is not None
        }
        return dataclasses.replace(first, **joined)


class Detector(nn.Module):
    """An unknown-ness score with a name, the model outputs it needs, and optional fitting.

    Subclasses set ``needs`` (names from ``OUTPUTS``), implement ``_score`` and, if they are
    fitted, set ``requires_fit`` and implement ``_fit``. A fitted detector keeps its state in
    the tensors named by ``state_names`` (registered as non-persistent buffers, so they follow
    ``.to(device)`` but stay out of the LightningModule's ``state_dict``); detectors with
    other state override ``fitted_state`` / ``load_fitted_state``.

    ``fit`` and ``score`` check the outputs first; the scores land on the inputs' device (a
    detector moves its fitted state there).
    """

    needs: frozenset[str] = frozenset({"logits"})
    requires_fit: bool = False
    state_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.name = type(self).__name__.lower()  # build_detectors sets it to the config key
        self._fitted = False
        for state_name in self.state_names:
            self.register_buffer(state_name, None, persistent=False)

    # --- what subclasses implement ----------------------------------------------------------
    def _fit(self, outputs: ModelOutputs) -> None:
        """Fit on the known training split (``outputs.labels`` set)."""

    def _score(self, outputs: ModelOutputs) -> Tensor:
        raise NotImplementedError

    def _follow(self, device: torch.device) -> None:
        """Move the fitted state to ``device`` before scoring there."""
        if any(b.device != device for b in self.buffers()):
            self.to(device)

    # --- the interface ----------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._fitted or not self.requires_fit

    def fit(self, outputs: ModelOutputs) -> "Detector":
        """Fit on the known training split's outputs; a no-op for detectors that need none."""
        if not self.requires_fit:
            return self
        self._check(outputs, "fit on")
        if outputs.labels is None:
            raise OSRError(
                f"detector '{self.name}' is fitted on labelled outputs of the known training "
                "split: pass ModelOutputs with labels set."
            )
        self._fit(outputs)
        self._fitted = True
        return self

    def score(self, outputs: ModelOutputs) -> Tensor:
        """One score per image, higher = more unknown, on the inputs' device."""
        self._check(outputs, "score")
        if not self.is_fitted:
            raise OSRError(
                f"detector '{self.name}' is not fitted: fit it on the known training split "
                "(Detector.fit) or load its fitted state from the checkpoint "
                "(Detector.load_fitted_state)."
            )
        self._follow(outputs.logits.device)
        return self._score(outputs)

    def forward(self, outputs: ModelOutputs) -> Tensor:
        return self.score(outputs)

    def fitted_state(self) -> dict[str, Tensor]:
        """Plain tensors that reproduce this detector's scores once loaded into a fresh one
        built from the same config (empty for detectors that are not fitted)."""
        if not self.requires_fit:
            return {}
        if not self._fitted:
            raise OSRError(f"detector '{self.name}' has no fitted state: fit it first.")
        return {name: getattr(self, name).detach() for name in self.state_names}

    def load_fitted_state(self, state: Mapping[str, Tensor]) -> None:
        """Take back what ``fitted_state`` returned (e.g. read from a checkpoint)."""
        self._check_state_keys(state, self.state_names if self.requires_fit else ())
        for name, value in state.items():
            setattr(self, name, value)
        self._fitted = self.requires_fit

    def _check_state_keys(self, state: Mapping[str, Tensor], expected: Collection[str]) -> None:
        if set(state) != set(expected) or not all(isinstance(v, Tensor) for v in state.values()):
            raise OSRError(
                f"the fitted state of detector '{self.name}' holds {sorted(state)}, but "
                f"{type(self).__name__} keeps {sorted(expected)}: it was fitted with another "
                "detector configuration. Refit the detectors (recalibrate the checkpoint)."
            )

    def _check(self, outputs: ModelOutputs, action: str) -> None:
        missing = self.needs - outputs.provided
        if missing:
            raise OSRError(
                f"detector '{self.name}' needs the model's {', '.join(sorted(missing))} to "
                f"{action}, but the outputs hold only {', '.join(sorted(outputs.provided))}. "
                "Use a model that provides them (recon: model=mlae), or remove "
                f"detectors.{self.name} from the config."
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, needs={sorted(self.needs)}"
