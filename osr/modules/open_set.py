"""What every osr LightningModule shares: metrics, optimizers, detectors, thresholds and the
open-set decision."""

import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from osr.data.labels import unknown_label
from osr.detectors import (
    ModelOutputs,
    ObjectiveScore,
    build_detectors,
    check_names,
    score_detectors,
)
from osr.detectors.builtin import BUILTIN
from osr.modules.epoch_sums import EpochSums
from osr.modules.training_figures import TrainingFigures
from osr.modules.views import TestViews
from osr.objectives import Objective, build_objective
from osr.utils.config import plain
from osr.utils.errors import NotCalibratedError, OSRError

THRESHOLDS_KEY = "osr_thresholds"  # checkpoint key of the calibrated thresholds, by detector
DETECTORS_KEY = "osr_detectors"  # checkpoint key of the detectors' fitted state, by detector
OBJECTIVE_KEY = "osr_objective"  # checkpoint key of what the objective fitted after training
# checkpoint key of the calibration images' voting statistic that conformal p-values are
# computed against (osr.scoring.p_values)
REFERENCE_KEY = "osr_conformal_reference"
# no NaN checks: each would wait for the device every step
mean_metric = partial(MeanMetric, nan_strategy="disable")


class OpenSetModule(TrainingFigures, pl.LightningModule):
    """A classifier over K known classes that can also answer UNKNOWN (label K).

    Subclasses build their networks, then call ``_finish_init``; they implement
    ``model_outputs(x) -> ModelOutputs`` (what detectors read: logits, penultimate features,
    last layer, ...), declare what it ``provides``, and implement ``_loss(x, y) -> (loss,
    logits, extra logs)``. The classifier network (``classifier_net``: ``features(x)`` and
    ``head``) is trained with the ``objective`` (``osr.objectives``; cross-entropy by default),
    which also gives the logits. The detectors come from the ``detectors`` config (name ->
    ``_target_``), plus the objective's own score when it has one; thresholds are kept by
    detector name. Both travel in checkpoints beside the weights (``THRESHOLDS_KEY``,
    ``DETECTORS_KEY``), so the ``state_dict`` does not depend on which detectors run.
    """

    # parts of the loss that ``_loss`` also reports; an instance adds its objective's terms
    loss_terms: tuple[str, ...] = ()
    # what ``model_outputs`` fills in for a cross-entropy objective; an instance drops "head"
    # when its objective's logits are not the head's, and adds "objective" when it has a score
    provides: frozenset[str] = frozenset()
    # the scores of checkpoints written before the detectors config, in the order of their
    # ``thresholds`` buffer
    builtin_detectors: tuple[str, ...] = ()

    def __init__(
        self,
        optimizer: dict,
        class_names: list[str],
        voting_scores: list[str],
        scheduler: dict | None = None,
        detectors: Mapping[str, Any] | None = None,
        test_views: TestViews | None = None,
    ) -> None:
        super().__init__()
        if detectors is None:
            detectors = {name: {"_target_": BUILTIN[name]} for name in self.builtin_detectors}
        if not voting_scores:
            raise OSRError("model.voting_scores is empty: name one or more detectors.")
        self._pending_detectors = (detectors, voting_scores)  # built by _finish_init
        # no argument checks (nor NaN checks, ``mean_metric``): each would wait for the device
        accuracy = partial(
            MulticlassAccuracy, len(class_names), average="micro", validate_args=False
        )
        self.val_loss, self.test_loss = mean_metric(), mean_metric()
        self.val_acc = accuracy()
        self.test_acc = accuracy()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run remembers it
        # the copies whose features join each image's (``view_features``)
        self.test_views = test_views if test_views is not None else TestViews()

    def _finish_init(
        self,
        channels_last: bool,
        compile: bool | str,
        networks: list[nn.Module],
        objective: Mapping[str, Any] | None = None,
    ) -> None:
        """Called by subclasses once their ``networks`` exist: builds the ``objective`` (its
        config; None: cross-entropy) on ``classifier_net``, the loss-term metrics and the
        detectors. Built after the networks, an objective's parameters leave the networks'
        random initialization as it was.

        ``compile``: false, true (``torch.compile``'s default mode) or a mode name such as
        ``reduce-overhead`` (CUDA graphs; pair it with ``data.drop_last=true``). The networks
        are compiled in place, so parameter names and checkpoints do not change.
        """
        head = self.classifier_net.head
        self.objective: Objective = build_objective(objective, self.num_classes, head.in_features)
        if not self.objective.uses_head:
            # no gradient would reach it, and DDP refuses trainable parameters without one
            head.requires_grad_(False)
        self.loss_terms = (*type(self).loss_terms, *self.objective.terms)
        if len(set(self.loss_terms)) < len(self.loss_terms):
            raise OSRError(
                f"objective: {type(self.objective).__name__}'s loss terms "
                f"{list(self.objective.terms)} clash with {type(self).__name__}'s "
                f"{list(type(self).loss_terms)}; rename them."
            )
        self.train_sums = EpochSums(("loss", *self.loss_terms))
        provides = set(type(self).provides)
        if not self.objective.uses_head_as_logits:
            provides.discard("head")  # head(features) are not this model's logits
        if self.objective.score_name is not None:
            provides.add("objective")
        self.provides = frozenset(provides)
        self.replace_detectors(*self._pending_detectors)
        del self._pending_detectors
        if channels_last:
            # NHWC lets oneDNN run these small convs and max-pools about 2x faster on CPU.
            self.to(memory_format=torch.channels_last)
        if compile not in (False, True) and not isinstance(compile, str):
            raise OSRError(
                f"model.compile={compile!r}: use false, true or a torch.compile mode, e.g. "
                "model.compile=reduce-overhead"
            )
        if compile:
            for network in networks:
                network.compile(mode=None if compile is True else compile)

    def __setattr__(self, name: str, value: Any) -> None:
        """Lightning sets ``_current_fx_name`` around every hook it calls, about forty times a
        training step; it is never a parameter, buffer or submodule, so nn.Module's checks for
        those (about 1.5 us each time on a CPU) are skipped for it."""
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def num_classes(self) -> int:
        return len(self.hparams.class_names)

    @property
    def unknown_label(self) -> int:
        return unknown_label(self.num_classes)

    # --- the classifier and its objective ---------------------------------------------------
    @property
    def classifier_net(self) -> nn.Module:
        """The network that classifies: ``features(x)`` (penultimate activations) and
        ``head`` (the last ``nn.Linear``), as ``ConvNet`` has."""
        raise NotImplementedError

    def _classifier_step(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits, features) of a training, validation or test step. With an objective that
        reads only the head's logits they come from the network's own forward (compiled by
        ``model.compile``, with its dropout before the head), and features are None."""
        net = self.classifier_net
        if not self.objective.needs_features:
            return net(x), None
        features = net.features(x)
        return self.objective.logits(features, net.head), features

    def _objective_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(the objective's loss, logits, its terms) of a batch."""
        logits, features = self._classifier_step(x)
        loss, terms = self.objective.loss(features, logits, y, self.classifier_net.head)
        return loss, logits, terms

    def classify(self, x: Tensor) -> Tensor:
        """Images -> the objective's logits, differentiable (what ODIN reads as ``classify``
        when the logits are not the head's). Eval mode."""
        net = self.classifier_net
        return self.objective.logits(net.features(x), net.head)

    def view_features(self, x: Tensor) -> Tensor:
        """Penultimate features of each image for the detectors and the open-set decision.

        With ``test_views`` (test-time augmentation: ``model.test_rotations``, ``test_shift``,
        ``test_flip``), the mean of the features of the image and of its rotated, shifted and
        mirrored copies, from one pass over all the views: what the network says of an image
        then depends less on its exact pose.
        Training never sees this; fitting, calibration and evaluation all do, so they stay
        consistent.
        """
        net = self.classifier_net
        if not self.test_views.active:
            return net.features(x)
        features = net.features(self.test_views(x))
        return features.unflatten(0, (-1, len(x))).mean(dim=0)

    def _classifier_outputs(self, x: Tensor, **more: Any) -> ModelOutputs:
        """What detectors read of the classifier, from one pass (eval mode): logits from the
        objective, features (``view_features``), and the head, the classifier and the
        objective where they mean what detectors take them for."""
        net = self.classifier_net
        features = self.view_features(x)
        head = net.head
        objective = self.objective
        head_logits = objective.uses_head_as_logits
        return ModelOutputs(
            logits=objective.logits(features, head),
            features=features,
            images=x,
            head=head if head_logits else None,
            classify=net if head_logits else self.classify,
            objective=objective if objective.score_name is not None else None,
            **more,
        )

    # --- open-set interface -------------------------------------------------------------
    def model_outputs(self, x: Tensor, needs: Any = None) -> ModelOutputs:
        raise NotImplementedError

    def replace_detectors(
        self, detectors: Mapping[str, Any], voting_scores: list[str] | None = None
    ) -> None:
        """Build the detectors of a ``detectors`` config (unfitted, no thresholds yet), after
        the objective's own score when it has one."""
        built = build_detectors(plain(detectors), self.provides)
        name = self.objective.score_name
        if name is not None:
            if name in built:
                raise OSRError(
                    f"detectors.{name}: {name} is the score of the objective "
                    f"({type(self.objective).__name__}), which every detector set holds; "
                    "rename the entry."
                )
            own = ObjectiveScore()
            own.name = name
            built = {name: own, **built}
        self.detectors = nn.ModuleDict(built)
        check_names(
            voting_scores or self.hparams.voting_scores, self.detectors, "model.voting_scores"
        )
        self.thresholds: dict[str, float] = {}
        self.conformal_reference: dict[str, Any] = {}

    @property
    def score_names(self) -> tuple[str, ...]:
        return tuple(self.detectors)

    def logits_and_scores(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The logits and every detector's score of each image (higher = more unknown), from
        one pass of the networks."""
        outputs = self.model_outputs(x)
        return outputs.logits, score_detectors(self.detectors, outputs)

    def scores(self, x: Tensor) -> dict[str, Tensor]:
        """Every detector's score of each image of the batch (higher = more unknown)."""
        return self.logits_and_scores(x)[1]

    @property
    def is_calibrated(self) -> bool:
        voting = self.hparams.voting_scores
        return all(n in self.thresholds and self.detectors[n].is_fitted for n in voting)

    def threshold_dict(self) -> dict[str, float]:
        return dict(self.thresholds)

    def set_thresholds(self, thresholds: Mapping[str, float]) -> None:
        """Keep each threshold as the float32 value it acts as against float32 scores."""
        values = torch.tensor([thresholds[name] for name in self.score_names])
        self.thresholds = dict(zip(self.score_names, values.tolist(), strict=True))

    def open_set_state(self) -> dict[str, Any]:
        """Thresholds, fitted detector state and what the objective fitted after training:
        plain floats and tensors for a checkpoint."""
        fitted = {
            name: d.fitted_state()
            for name, d in self.detectors.items()
            if d.requires_fit and d.is_fitted
        }
        return {
            THRESHOLDS_KEY: dict(self.thresholds),
            DETECTORS_KEY: fitted,
            OBJECTIVE_KEY: self.objective.fitted_state(),
            REFERENCE_KEY: self.conformal_reference,
        }

    def load_open_set_state(self, checkpoint: dict[str, Any]) -> None:
        """Take thresholds, fitted detector and objective state from a checkpoint (none of the
        objective: not fitted). One written before thresholds were kept by name holds a
        ``thresholds`` tensor in its ``state_dict`` instead, aligned with
        ``builtin_detectors`` (it is moved out of the ``state_dict``)."""
        legacy = checkpoint["state_dict"].pop("thresholds", None)
        if legacy is not None:
            pairs = zip(self.builtin_detectors, legacy.tolist(), strict=True)
            thresholds = {name: value for name, value in pairs if value == value}  # not NaN
        else:
            thresholds = checkpoint.get(THRESHOLDS_KEY, {})
        self.thresholds = {n: v for n, v in thresholds.items() if n in self.detectors}
        reference = checkpoint.get(REFERENCE_KEY, {})
        voting = list(self.hparams.voting_scores)
        self.conformal_reference = reference if reference.get("voting") == voting else {}
        for name, state in checkpoint.get(DETECTORS_KEY, {}).items():
            if name in self.detectors:
                self.detectors[name].load_fitted_state(state)
        self.objective.load_fitted_state(checkpoint.get(OBJECTIVE_KEY, {}))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.open_set_state())
        self.save_train_figures(checkpoint)

    def decide(
        self,
        logits: Tensor,
        scores: dict[str, Tensor],
        thresholds: Mapping[str, float] | None = None,
    ) -> Tensor:
        """Labels in 0..K: UNKNOWN (K) when any voting score exceeds its threshold or is NaN
        (the module's calibrated thresholds unless ``thresholds`` are given). Scores are
        compared as float32, as the thresholds were fitted (``osr.scoring.thresholds``)."""
        if thresholds is None:
            if not self.is_calibrated:
                raise NotCalibratedError(
                    f"{type(self).__name__} has no thresholds for "
                    f"{list(self.hparams.voting_scores)}: calibrate it first (`python -m "
                    "osr.calibrate ckpt_path=...`, or train with the threshold_calibration "
                    "callback)."
                )
            thresholds = self.thresholds
        labels = logits.argmax(dim=1)
        rejected = torch.zeros_like(labels, dtype=torch.bool)
        for name in self.hparams.voting_scores:
            rejected |= ~(scores[name].float() <= thresholds[name])  # NaN: never <=
        return torch.where(rejected, torch.full_like(labels, self.unknown_label), labels)

    @torch.no_grad()
    def predict_open(self, x: Tensor) -> Tensor:
        logits, scores = self.logits_and_scores(x)
        return self.decide(logits, scores)

    # --- training -------------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        self.objective.start_epoch()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss, logits, extra = self._loss(x, y)
        values = [loss.detach(), *(extra[name].detach() for name in self.loss_terms)]
        self.train_sums.add(values, logits.detach(), y)
        return loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_open_set_state(checkpoint)
        self.keep_saved_train_figures(checkpoint)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss, logits, extra = self._loss(x, y)
        self.val_loss(loss)
        self.val_acc(logits, y)
        n = len(y)
        self.log(
            "val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n
        )
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in extra.items():
            self.log(
                f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=n
            )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a couple of batches, not an epoch: not a best
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss, logits, _ = self._loss(x, y)
        self.test_loss(loss)
        self.test_acc(logits, y)
        n = len(y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, batch_size=n)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, batch_size=n)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the module's parameters, without its schedule (which
        needs the Trainer's step count): what a hand-written loop steps."""
        return instantiate(self.hparams.optimizer)(params=self.parameters())

    def _estimated_steps(self) -> int:
        """The trainer's estimate of the optimizer steps of the whole training. Lightning
        builds the training loader to count its batches; here that happens before a resumed
        checkpoint is read, and Lightning loads a loader's saved position only when it builds
        the loader, so the loader built here is dropped to be built again after the checkpoint
        is read (else a run resumed mid-epoch would restart the epoch's order)."""
        loop = self.trainer.fit_loop
        built_before = loop._combined_loader is not None
        steps = self.trainer.estimated_stepping_batches
        if not built_before:
            loop._combined_loader = None
        return steps

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if not self.hparams.scheduler:
            return optimizer
        scheduler_cfg = dict(self.hparams.scheduler)
        monitor = scheduler_cfg.pop("monitor", "val/loss")
        interval = scheduler_cfg.pop("interval", "epoch")
        build = instantiate(scheduler_cfg)
        if "total_steps" in inspect.signature(build).parameters:
            # schedules over the whole training (osr.optim.warmup_cosine)
            build = partial(build, total_steps=self._estimated_steps())
        scheduler = build(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": interval},
        }
