"""The baseline: any classifier network, trained with a training objective (cross-entropy by
default)."""

from collections.abc import Collection, Sequence

from hydra.utils import instantiate
from torch import Tensor, nn

from osr.detectors import ModelOutputs
from osr.modules.open_set import OpenSetModule
from osr.modules.views import TestViews
from osr.utils.config import plain


class Classifier(OpenSetModule):
    """Scores from the logits alone (``msp``, ``max_logit``, ``energy``), the features, and
    the objective's own score when it has one.

    ``objective``: the ``objective`` group's config (``conf/objective/``); None trains with
    cross-entropy, as checkpoints saved before objectives existed were.
    ``input_shape``: (channels, height, width) of the images, the known DataModule's; the
    network (``model.net``) is built for it.
    ``test_padding``: the data's ``mean``, ``std`` and ``crop_padding``, so that the test-time
    views pad as training does (``TestViews``).
    """

    builtin_detectors = ("msp", "max_logit", "energy")
    provides = frozenset({"images", "logits", "features", "head", "classify"})

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        class_names: list[str],
        voting_scores: list[str] = ("msp",),
        scheduler: dict | None = None,
        channels_last: bool = True,
        detectors: dict | None = None,
        compile: bool | str = False,
        objective: dict | None = None,
        test_rotations: Sequence[float] = (),
        test_flip: bool = False,
        test_shift: int = 0,
        test_padding: dict | None = None,
        input_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        net, optimizer, scheduler = plain(net), plain(optimizer), plain(scheduler)
        class_names, voting_scores = list(class_names), list(plain(voting_scores))
        detectors, objective, test_padding = plain(detectors), plain(objective), plain(test_padding)
        test_rotations, input_shape = list(plain(test_rotations)), tuple(plain(input_shape))
        super().__init__(
            optimizer,
            class_names,
            voting_scores,
            scheduler,
            detectors,
            TestViews(test_rotations, test_flip, test_shift, **(test_padding or {})),
        )
        self.save_hyperparameters(logger=False)
        self.net = instantiate(net, num_classes=len(class_names), input_shape=input_shape)
        self._finish_init(channels_last, compile, [self.net], objective)

    @property
    def classifier_net(self) -> nn.Module:
        return self.net

    def forward(self, x: Tensor) -> Tensor:
        """The objective's logits (the network's forward for cross-entropy)."""
        return self._classifier_step(x)[0]

    def model_outputs(self, x: Tensor, needs: Collection[str] | None = None) -> ModelOutputs:
        """What detectors read, from one pass: the network (``model.net``) must provide
        ``features(x)`` (penultimate activations) and ``head`` (the last ``nn.Linear``), as
        ``ConvNet`` does. Call it in eval mode, where ``head(features)`` is ``forward``.
        ``needs`` is accepted for symmetry with the autoencoder-classifier: one pass gives
        everything here."""
        return self._classifier_outputs(x)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return self._objective_loss(x, y)
