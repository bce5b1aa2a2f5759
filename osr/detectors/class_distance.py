"""Distance to the nearest class mean of the known training features."""

import torch
from torch import Tensor

from osr.detectors.base import Detector, ModelOutputs
from osr.utils.errors import OSRError


class ClassDistance(Detector):
    """Squared Euclidean distance of an image's features to the closest class mean of the known
    training features.

    The distances are taken as differences, not by expanding |x|^2 + |c|^2 - 2 x.c (as
    ``torch.cdist`` and pytorch-ood's ``pairwise_distances`` do), which in float32 loses the
    small distances of known images to cancellation.
    """

    needs = frozenset({"features"})
    requires_fit = True
    state_names = ("centers",)

    def _fit(self, outputs: ModelOutputs) -> None:
        features, labels = outputs.features.float(), outputs.labels
        num_classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=num_classes)
        absent = (counts == 0).nonzero().flatten().tolist()
        if absent:
            raise OSRError(
                f"detector '{self.name}' needs training images of every known class, but "
                f"classes {absent} have none: fit it on the whole known training split."
            )
        sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
        self.centers = sums / counts[:, None]

    def _score(self, outputs: ModelOutputs) -> Tensor:
        differences = outputs.features.float()[:, None, :] - self.centers
        return differences.square().sum(dim=2).amin(dim=1)
