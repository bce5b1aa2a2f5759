"""Unknown-ness detectors: one interface, built from the ``detectors`` config.

See ``base`` for the interface, ``builtin`` for osr's own five scores, ``adapter`` for
pytorch-ood's detectors and ``registry`` for building them from the config.
"""

from osr.detectors.adapter import PytorchOOD
from osr.detectors.base import OUTPUTS, Detector, ModelOutputs
from osr.detectors.builtin import MSP, BinaryDiff, Energy, MaxLogit, ReconL2
from osr.detectors.class_distance import ClassDistance
from osr.detectors.objective_score import ObjectiveScore
from osr.detectors.registry import (
    build_detectors,
    check_names,
    fit_detectors,
    fit_needs,
    fitted_states,
    load_fitted_states,
    score_detectors,
)

__all__ = [
    "MSP",
    "OUTPUTS",
    "BinaryDiff",
    "ClassDistance",
    "Detector",
    "Energy",
    "MaxLogit",
    "ModelOutputs",
    "ObjectiveScore",
    "PytorchOOD",
    "ReconL2",
    "build_detectors",
    "check_names",
    "fit_detectors",
    "fit_needs",
    "fitted_states",
    "load_fitted_states",
    "score_detectors",
]
