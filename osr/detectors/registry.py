"""The configured detectors: built from the ``detectors`` config (name = key), fitted, scored
and their fitted state gathered for a checkpoint."""

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor

from osr.detectors.base import Detector, ModelOutputs
from osr.utils.errors import OSRError

log = logging.getLogger(__name__)

# names become metric keys (ood.<set>.scores.<name>.auroc) and config keys
NAME = re.compile(r"[a-z][a-z0-9_]*")


def build_detectors(
    config: Mapping[str, Any] | None, provides: Collection[str] | None = None
) -> dict[str, Detector]:
    """One detector per entry of the ``detectors`` config, named by its key, in config order.

    A null entry is skipped (``detectors.knn=null`` drops one). With ``provides`` (what the
    model's ``model_outputs`` holds, e.g. ``module.provides``), detectors needing more are
    skipped: ``detectors=default`` lists the reconstruction scores, which only the
    autoencoder-classifier can feed.
    """
    detectors: dict[str, Detector] = {}
    for name, node in (config or {}).items():
        if node is None:
            continue
        where = f"detectors.{name}"
        if not NAME.fullmatch(str(name)):
            raise OSRError(
                f"{where}: a detector name is lower-case letters, digits and _ (it becomes a "
                "metric key); rename the entry."
            )
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise OSRError(
                f"{where} has no _target_: give the detector class (e.g. osr.detectors.MSP, "
                "or osr.detectors.PytorchOOD around a pytorch-ood class; see "
                "conf/detectors/all.yaml)."
            )
        detector = _instantiate(where, node)
        if not isinstance(detector, Detector):
            raise OSRError(
                f"{where}: {node['_target_']} is not an osr.detectors.Detector; wrap "
                "pytorch-ood classes in osr.detectors.PytorchOOD (see conf/detectors/all.yaml)."
            )
        detector.name = name
        if provides is not None and not detector.needs <= set(provides):
            missing = sorted(detector.needs - set(provides))
            log.info("detector %s skipped: the model does not provide %s", name, missing)
            continue
        detectors[name] = detector
    return detectors


def _instantiate(where: str, node: Mapping[str, Any]) -> Any:
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, OSRError):
            raise OSRError(f"{where}: {e.__cause__}") from None
        raise OSRError(
            f"{where}: could not build {node['_target_']} ({str(e).splitlines()[0]}). "
            "Check its _target_ and arguments."
        ) from None


def check_names(names: Iterable[str], detectors: Collection[str], key: str) -> None:
    """Raise if a config entry (``key``, e.g. ``model.voting_scores``) names a detector that
    is not configured."""
    names = list(names)
    unknown = [n for n in names if n not in detectors]
    if unknown:
        raise OSRError(
            f"{key}={names}: no detector named {unknown}; the configured detectors are "
            f"{sorted(detectors)}. Pick from those, or add the detector to the detectors "
            "config (detectors=all holds every one)."
        )


def fit_needs(detectors: Mapping[str, Detector]) -> frozenset[str]:
    """What fitting needs of the training split's outputs: keep these when gathering them
    (``ModelOutputs.keep``); the rest, images and reconstructions above all, can go."""
    return frozenset().union(*(d.needs for d in detectors.values() if d.requires_fit))


def fit_detectors(detectors: Mapping[str, Detector], outputs: ModelOutputs) -> None:
    """Fit those that need it on the known training split's outputs (labels set)."""
    for detector in detectors.values():
        detector.fit(outputs)


def score_detectors(detectors: Mapping[str, Detector], outputs: ModelOutputs) -> dict[str, Tensor]:
    return {name: detector.score(outputs) for name, detector in detectors.items()}


def fitted_states(detectors: Mapping[str, Detector]) -> dict[str, dict[str, Tensor]]:
    """The fitted state of every fitted detector, by name: plain tensors for a checkpoint."""
    return {name: d.fitted_state() for name, d in detectors.items() if d.requires_fit}


def load_fitted_states(
    detectors: Mapping[str, Detector], states: Mapping[str, Mapping[str, Tensor]]
) -> None:
    """Give each fitted detector its state back (from ``fitted_states``)."""
    missing = [name for name, d in detectors.items() if d.requires_fit and name not in states]
    if missing:
        raise OSRError(
            f"the checkpoint holds no fitted state for detectors {missing} (it was fitted "
            f"with {sorted(states)}): recalibrate it to fit them (python -m osr.calibrate)."
        )
    for name, detector in detectors.items():
        detector.load_fitted_state(states.get(name, {}))
