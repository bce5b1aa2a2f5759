"""The five scores osr had before detectors, under the same names and with the same values
(each calls its function in ``osr.detectors.scores``)."""

from torch import Tensor

from osr.detectors import scores
from osr.detectors.base import Detector, ModelOutputs

# the scores of checkpoints written before the detectors config, by name
BUILTIN = {
    "msp": "osr.detectors.MSP",
    "max_logit": "osr.detectors.MaxLogit",
    "energy": "osr.detectors.Energy",
    "recon_l2": "osr.detectors.ReconL2",
    "binary_diff": "osr.detectors.BinaryDiff",
}


class MSP(Detector):
    """1 - maximum softmax probability."""

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return scores.msp(outputs.logits)


class MaxLogit(Detector):
    """Negative maximum logit."""

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return scores.max_logit(outputs.logits)


class Energy(Detector):
    """The free energy, -logsumexp of the logits."""

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return scores.energy(outputs.logits)


class ReconL2(Detector):
    """L2 norm of the reconstruction error."""

    needs = frozenset({"images", "recon"})

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return scores.recon_l2(outputs.images, outputs.recon)


class BinaryDiff(Detector):
    """Pixels whose Otsu binarization differs between the image and its reconstruction."""

    needs = frozenset({"images", "recon"})

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return scores.binary_diff(outputs.images, outputs.recon)
