"""The notebook's ML_Autoencoder: an autoencoder trained jointly with a classifier head."""

from collections.abc import Collection, Sequence

import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from osr.detectors import ModelOutputs
from osr.modules.open_set import OpenSetModule
from osr.modules.views import TestViews
from osr.utils.config import plain


class AutoencoderClassifier(OpenSetModule):
    """loss = rec_weight * MSE(recon, x) + cls_weight * objective(logits, y), the objective
    being cross-entropy unless ``objective`` (the ``objective`` group's config) says otherwise.

    The classifier sees the input image (not the latent vector), as in the notebook; the
    reconstruction error is what says UNKNOWN. Both networks are built for ``input_shape``
    (channels, height, width), the known DataModule's: the decoder reconstructs that shape.

    ``net`` is the classifier network's config (``model/net=``, as for the baseline; older
    checkpoints' ``classifier``, renamed by ``osr.utils.migrations``).
    ``test_padding``: as for the baseline (``Classifier``).
    """

    builtin_detectors = ("recon_l2", "binary_diff", "msp", "max_logit", "energy")
    loss_terms = ("rec_mse",)
    provides = frozenset({"images", "logits", "features", "recon", "head", "classify"})

    def __init__(
        self,
        autoencoder: dict,
        net: dict,
        optimizer: dict,
        class_names: list[str],
        voting_scores: list[str] = ("recon_l2", "binary_diff"),
        rec_weight: float = 1.0,
        cls_weight: float = 1.0,
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
        net, autoencoder = plain(net), plain(autoencoder)
        optimizer, scheduler = plain(optimizer), plain(scheduler)
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
        self.autoencoder = instantiate(autoencoder, input_shape=input_shape)
        self.classifier = instantiate(net, num_classes=len(class_names), input_shape=input_shape)
        networks = [self.autoencoder, self.classifier]
        self._finish_init(channels_last, compile, networks, objective)

    @property
    def classifier_net(self) -> nn.Module:
        return self.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, the objective's logits)."""
        recon = self.autoencoder(x)
        return recon, self._classifier_step(x)[0]

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.autoencoder(x)

    def encode(self, x: Tensor) -> Tensor:
        """The autoencoder's latent vector of each image."""
        return self.autoencoder.encoder(x)[0]

    def model_outputs(self, x: Tensor, needs: Collection[str] | None = None) -> ModelOutputs:
        """What detectors read, from one pass of each network: the reconstruction, and the
        classifier's penultimate features, last layer and logits (see
        ``Classifier.model_outputs``; eval mode). The autoencoder runs only when ``needs``
        (default: everything) holds ``recon``: fitting on the training split seldom does."""
        recon = self.autoencoder(x) if needs is None or "recon" in needs else None
        return self._classifier_outputs(x, recon=recon)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        recon = self.autoencoder(x)
        cls_loss, logits, terms = self._objective_loss(x, y)
        rec_mse = F.mse_loss(recon, x)
        loss = self.hparams.rec_weight * rec_mse + self.hparams.cls_weight * cls_loss
        return loss, logits, {"rec_mse": rec_mse, **terms}
