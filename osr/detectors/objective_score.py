"""The training objective's own unknown-ness score, as a detector."""

from torch import Tensor

from osr.detectors.base import Detector, ModelOutputs


class ObjectiveScore(Detector):
    """``objective.score(features, logits)``: e.g. the distance to the nearest class center of
    center loss, or ARPL's minus largest logit. Not fitted: what it reads was trained.

    The module adds it to every detector set when its objective has a score (named by the
    objective's ``score_name``), so it is not listed in the ``detectors`` configs.
    """

    needs = frozenset({"objective", "features", "logits"})

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return outputs.objective.score(outputs.features, outputs.logits)
