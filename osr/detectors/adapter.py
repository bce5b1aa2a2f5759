"""pytorch-ood's detectors, used as they are, on the model outputs they read."""

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pytorch_ood import api
from torch import Tensor, nn

from osr.detectors.base import Detector, ModelOutputs
from osr.utils.errors import OSRError

# what the wrapped detector reads -> (the ModelOutputs field, its fit method, its predict method)
INPUTS = {
    "logits": ("logits", "fit_logits", "predict_logits"),
    "features": ("features", "fit_features", "predict_features"),
    "feature_maps": ("features", "fit_feature_maps", "predict_feature_maps"),
    "images": ("images", None, "predict"),
}
# parts of the model a constructor argument can be bound to -> the ModelOutputs field
PARTS = {"head": "head", "head.weight": "head", "head.bias": "head", "classify": "classify"}
_SCALARS = (bool, int, float)
_REFIT = ("refit.inputs", "refit.labels")


class _MapsHead:
    """The last layer applied to features shaped as B x D x 1 x 1 feature maps."""

    def __init__(self, head: nn.Linear) -> None:
        self.head = head

    def __call__(self, maps: Tensor) -> Tensor:
        return self.head(maps.flatten(1))


def _is_input(value: Any, pristine: Any) -> bool:
    """Whether an attribute after fitting is plain data or what the constructor was given
    (``pristine``), i.e. not state built by fit that only pickling could carry."""
    if value is None or isinstance(value, (Tensor, torch.device, str, *_SCALARS)):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (str, *_SCALARS)) for v in value)
    return callable(value) and value is pristine


class PytorchOOD(Detector):
    """A pytorch-ood detector on logits, features, feature maps or images.

    Args:
        detector: the pytorch-ood detector, built by Hydra with its model/encoder/backbone
            null; or a partial (``_partial_: true``) when its constructor needs parts of the
            model, which ``bind`` names.
        inputs: what it reads: ``logits``, ``features``, ``feature_maps`` (the features as
            B x D x 1 x 1) or ``images`` (``predict(images)``, e.g. ODIN).
        bind: constructor argument -> part of the model: ``head`` (features -> logits; on
            feature maps it flattens them first), ``head.weight``, ``head.bias``, ``classify``
            (images -> logits, with gradients).
        fit_samples: fit on a seeded random subset of at most this many training images (the
            cost of KNN's scoring and OpenMax's fit grows with it); None fits on all.
        seed: the subset's seed.
        fit_device: fit there instead of on the outputs' device (KNN's sklearn index: cpu).

    The fitted state is every tensor of the wrapped detector plus the numbers fit changed.
    Where fit leaves state only pickling could carry (KNN's sklearn index, OpenMax's Weibull
    models), the state is the fit's inputs instead, and loading it fits again on them.
    """

    def __init__(
        self,
        detector: api.Detector | Callable[..., api.Detector],
        inputs: str = "logits",
        bind: Mapping[str, str] | None = None,
        fit_samples: int | None = None,
        seed: int = 0,
        fit_device: str | None = None,
    ) -> None:
        super().__init__()
        bind = dict(bind or {})
        is_partial = isinstance(detector, functools.partial)
        cls = detector.func if is_partial else type(detector)
        where = f"osr.detectors.PytorchOOD({getattr(cls, '__name__', cls)})"
        if not (isinstance(cls, type) and issubclass(cls, api.Detector)):
            raise OSRError(f"{where}: detector must be a pytorch_ood.detector class.")
        if inputs not in INPUTS:
            raise OSRError(f"{where}: inputs={inputs!r}; choose one of {list(INPUTS)}.")
        unknown = {arg: part for arg, part in bind.items() if part not in PARTS}
        if unknown:
            raise OSRError(f"{where}: bind={unknown} names unknown parts; use {list(PARTS)}.")
        if bind and not is_partial:
            raise OSRError(
                f"{where}: bind needs the detector built later, with the model's parts: "
                "add `_partial_: true` to its config."
            )
        self.requires_fit = bool(getattr(cls, "requires_fit", False))
        if self.requires_fit and inputs == "images":
            raise OSRError(f"{where}: it is fitted on a data loader; fit it on {list(INPUTS)[:3]}.")
        self.needs = frozenset({INPUTS[inputs][0], *(PARTS[p] for p in bind.values())})
        self.inputs, self.bind = inputs, bind
        self.fit_samples, self.seed, self.fit_device = fit_samples, seed, fit_device
        self._template = detector
        self._detector: api.Detector | None = None
        self._device: torch.device | None = None
        self._state: dict[str, Tensor] = {}
        self._pending = False  # loaded state not yet applied (it needs the model's parts)

    # --- building the wrapped detector ------------------------------------------------------
    def _part(self, part: str, outputs: ModelOutputs) -> Any:
        if part == "classify":
            return outputs.classify
        head = outputs.head
        if part == "head":
            return _MapsHead(head) if self.inputs == "feature_maps" else head
        return head.weight if part == "head.weight" else head.bias

    def _build(self, outputs: ModelOutputs, device: torch.device) -> api.Detector:
        """A fresh, unfitted detector on ``device``."""
        if isinstance(self._template, functools.partial):
            parts = {arg: self._part(part, outputs) for arg, part in self.bind.items()}
            detector = self._template(**parts)
        else:
            detector = copy.deepcopy(self._template)
        self._detector, self._device = detector.to(device), device
        return detector

    def _representation(self, outputs: ModelOutputs) -> Tensor:
        x = getattr(outputs, INPUTS[self.inputs][0])
        return x[:, :, None, None] if self.inputs == "feature_maps" else x

    # --- fitting and scoring ----------------------------------------------------------------
    def _fit(self, outputs: ModelOutputs) -> None:
        x, y = self._representation(outputs).detach(), outputs.labels
        if self.fit_samples is not None and len(y) > self.fit_samples:
            generator = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(len(y), generator=generator)[: self.fit_samples]
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        self._fit_on(outputs, x, y)

    def _fit_on(self, outputs: ModelOutputs, x: Tensor, y: Tensor) -> None:
        """Fit a fresh detector and capture its state (copies: the head's weights may change)."""
        device = torch.device(self.fit_device) if self.fit_device else x.device
        x, y = x.to(device), y.to(device)
        detector = self._build(outputs, device)
        pristine = dict(vars(detector))
        getattr(detector, INPUTS[self.inputs][1])(x, y)
        fitted = vars(detector)
        if all(_is_input(v, pristine.get(k)) for k, v in fitted.items()):
            self._state = {
                f"tensor.{k}": v.detach().clone() for k, v in fitted.items() if torch.is_tensor(v)
            }
            self._state |= {
                f"scalar.{k}": torch.tensor(v, dtype=torch.float64 if type(v) is float else None)
                for k, v in fitted.items()
                if isinstance(v, _SCALARS) and (k not in pristine or pristine[k] != v)
            }
        else:
            self._state = dict(zip(_REFIT, (x, y), strict=True))

    def _ready(self, outputs: ModelOutputs) -> api.Detector:
        """The wrapped detector on the outputs' device, with any loaded state applied."""
        device = outputs.logits.device
        if self._pending:
            self._pending = False
            if _REFIT[0] in self._state:
                self._fit_on(outputs, *(self._state[k].to(device) for k in _REFIT))
            else:
                detector = self._build(outputs, device)
                for key, value in self._state.items():
                    kind, _, attr = key.partition(".")
                    setattr(detector, attr, value if kind == "tensor" else value.item())
                self._device = None  # the loaded tensors may be anywhere
        elif self._detector is None:
            self._build(outputs, device)
        if self._device != device:
            self._device = device
            self._detector.to(device)
        return self._detector

    def _score(self, outputs: ModelOutputs) -> Tensor:
        detector = self._ready(outputs)
        scores = getattr(detector, INPUTS[self.inputs][2])(self._representation(outputs))
        return scores.to(outputs.logits.device, torch.float32)

    # --- fitted state -----------------------------------------------------------------------
    def fitted_state(self) -> dict[str, Tensor]:
        if not self.requires_fit:
            return {}
        if not self._fitted:
            raise OSRError(f"detector '{self.name}' has no fitted state: fit it first.")
        return dict(self._state)

    def load_fitted_state(self, state: Mapping[str, Tensor]) -> None:
        if not self.requires_fit:
            self._check_state_keys(state, ())
            return
        kinds = {key.partition(".")[0] for key in state}
        valid = bool(state) and (set(state) == set(_REFIT) or kinds <= {"tensor", "scalar"})
        self._check_state_keys(state, state if valid else ("tensor.<attribute>", *_REFIT))
        self._state, self._pending, self._fitted = dict(state), True, True
