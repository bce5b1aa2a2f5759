"""What an osr LightningModule keeps of its training epoch: the running sum of its loss,
accuracy and loss terms (``EpochSums``), logged once per epoch, carried across a resume, and
read to stop training on a non-finite loss."""

import math
from typing import Any

import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import Metric

from osr.modules.epoch_sums import EpochSums
from osr.utils.errors import OSRError
from osr.utils.metric_state import load_metric_states, metric_states

TRAIN_METRICS_KEY = "osr_train_metrics"  # checkpoint key of the epoch's accumulated figures


class TrainingFigures:
    """Mixed into ``OpenSetModule`` (before ``pl.LightningModule``), whose ``training_step``
    adds each step's figures to ``train_sums``. Its hooks log them, stop on a non-finite loss
    and put a resumed epoch's figures back; the module's checkpoint hooks call
    ``save_train_figures`` and ``keep_saved_train_figures``."""

    train_sums: EpochSums
    _saved_train_metrics: dict[str, Any] | None = None

    def check_finite_loss(self, window: str) -> None:
        """Raise if a training loss of this epoch has been NaN or infinite: the epoch's running
        sum of losses then is too. One device sync, made every ``trainer.log_every_n_steps``
        steps rather than by each step."""
        value = self.train_sums.total("loss").item()
        if not math.isfinite(value):
            raise OSRError(
                f"the training loss became {value} in epoch {self.current_epoch}, {window}; "
                "training stopped rather than go on with broken weights. Lower "
                "model.optimizer.lr, or resume from the last good checkpoint "
                "(checkpoints/last.ckpt)."
            )

    def _check_finite_since_last(self, step: int, when: str) -> None:
        if step > self._finite_through:  # the validation after an epoch's checked last batch
            self.check_finite_loss(f"steps {self._finite_through + 1}-{step} ({when})")
            self._finite_through = step

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The NaN stop: every ``trainer.log_every_n_steps`` steps and at an epoch's last batch,
        before the optimizer applies this step's gradients, so that neither the weights nor a
        checkpoint (saved at a step's or a validation's end) take a non-finite loss's update.
        In the module rather than a callback: a callback costs Lightning's dispatch of every
        hook at every step."""
        trainer = self.trainer
        step = trainer.global_step + 1  # the step being taken
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if step % trainer.log_every_n_steps == 0:
            self._check_finite_since_last(
                step, f"checked at step {step}, every trainer.log_every_n_steps"
            )
        elif done >= trainer.num_training_batches:
            self._check_finite_since_last(step, f"checked at the end of epoch {self.current_epoch}")

    def on_validation_start(self) -> None:
        """A validation within an epoch (``trainer.val_check_interval``) ends in checkpoints."""
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            step = self.trainer.global_step
            self._check_finite_since_last(step, f"checked before validating at step {step}")

    def train_epoch_metrics(self) -> dict[str, Tensor]:
        """The training epoch's loss, accuracy and loss terms so far (all ranks).

        Steps only accumulate them: ``self.log`` of a metric in every step cost about a third
        of a ConvNet step on CPU. ``on_train_epoch_end`` logs them once.
        """
        return {f"train/{name}": value for name, value in self.train_sums.compute().items()}

    def on_train_epoch_end(self) -> None:
        metrics = self.train_epoch_metrics()
        self.log("train/acc", metrics.pop("train/acc"), prog_bar=True)
        self.log_dict(metrics)
        self.train_sums.reset()

    def _train_metrics(self) -> dict[str, Metric]:
        return {"sums": self.train_sums}

    def save_train_figures(self, checkpoint: dict[str, Any]) -> None:
        """The epoch's figures so far, apart from the ``state_dict`` (which evaluate,
        calibrate and predict load strictly)."""
        checkpoint[TRAIN_METRICS_KEY] = {
            "epoch": self.current_epoch,
            "states": metric_states(self._train_metrics()),
        }

    def keep_saved_train_figures(self, checkpoint: dict[str, Any]) -> None:
        """Hold a checkpoint's figures until training resumes (``on_train_start``)."""
        self._saved_train_metrics = checkpoint.get(TRAIN_METRICS_KEY)

    def on_train_start(self) -> None:
        """Continue the resumed epoch's training figures. Lightning resumes a checkpoint saved
        at an epoch's last batch in the next epoch, skipping that epoch's end: then the saved
        figures belong to an epoch that is over and are dropped."""
        self._finite_through = self.trainer.global_step  # steps up to here are known good
        saved, self._saved_train_metrics = self._saved_train_metrics, None
        # states saved before the figures became one sum (other names) are not put back
        same_layout = saved and saved["states"].keys() == self._train_metrics().keys()
        if same_layout and saved["epoch"] == self.current_epoch and self.trainer.is_global_zero:
            load_metric_states(self._train_metrics(), saved["states"])
