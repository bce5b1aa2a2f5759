"""python -m osr.train: train, calibrate thresholds, test (and evaluate)."""

import importlib
import logging
import sys
import time
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from osr.callbacks import StoreRunConfig, ThresholdCalibration
from osr.callbacks.history import EpochHistory
from osr.data.datamodules import ImageDataModule
from osr.modules.open_set import OpenSetModule
from osr.reporting.report import write_results
from osr.reporting.run_info import describe
from osr.reporting.run_record import commit, write_run_record
from osr.scoring.calibration import check_calibration_size
from osr.scoring.operating_curve import curve_rule
from osr.scoring.test_sets import evaluate
from osr.utils.checkpoints import CONFIG_KEY, read_checkpoint, restore_best_weights
from osr.utils.config import (
    check_config,
    exits_on_user_error,
    instantiate_group,
    instantiate_module,
    to_plain,
)
from osr.utils.errors import CheckpointError, OSRError
from osr.utils.phases import phase, recording
from osr.utils.wandb_setup import finish_wandb, prepare_wandb

log = logging.getLogger("osr.train")


def build(cfg: DictConfig) -> tuple[ImageDataModule, OpenSetModule, pl.Trainer]:
    """The DataModule, module and Trainer of a run, callbacks and loggers included, as
    ``train`` makes them (``benchmarks.train_speed`` times this Trainer's steps)."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate_module(
        cfg, class_names=datamodule.class_names, input_shape=datamodule.input_shape
    )
    if model.test_views.flip and not datamodule.flippable:
        raise OSRError(
            f"model.test_flip=true for {datamodule.name}: a mirrored {datamodule.name} image "
            "is not an image of its class, so it is never flipped. Set model.test_flip=false."
        )
    if (cfg.get("callbacks") or {}).get("threshold_calibration") and cfg.get("calibration"):
        voting = len(model.hparams.voting_scores)
        rule = instantiate(cfg.calibration)
        own = datamodule.calibration_count > 0
        images = datamodule.calibration_count if own else datamodule.hparams.val_size
        key = "data.calibration_size" if own else "data.val_size"
        note = f" (and data.val_size, now {datamodule.hparams.val_size}, above it)" if own else ""
        check_calibration_size(rule, images, voting, key, note, cross_fitted=not own)
    run_config = to_plain(cfg)
    run_config.pop("hydra", None)
    callbacks = [*instantiate_group(cfg.get("callbacks")), StoreRunConfig(run_config)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")) or False
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config)  # the resolved config, in every logger
    return datamodule, model, trainer


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, load the best weights, test. Returns the logged metrics and the objects made.

    The seconds of each phase (``osr.utils.phases``; data setup, calibration and detector
    fitting are timed where they run, inside fit) go to run.json and the log."""
    started = time.time()
    commit()  # the code this process runs, recorded in run.json at the end
    with recording() as phases:
        metrics, best, made = _run(cfg)
    if made["trainer"].is_global_zero:
        write_run_record(cfg.paths.output_dir, started, phases=phases.seconds)
    _print_summary(metrics, best, cfg.paths.output_dir)
    return metrics, made


def _run(cfg: DictConfig) -> tuple[dict[str, float], str | None, dict[str, Any]]:
    """``train``'s work: the metrics, the best checkpoint and the objects made."""
    datamodule, model, trainer = build(cfg)
    if cfg.get("ckpt_path"):
        check_resumable(cfg.ckpt_path, cfg.model._target_)
    with phase("fit"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    validation_scores = None  # the calibrated weights' scores, for the operating curve
    for callback in trainer.callbacks:
        if isinstance(callback, ThresholdCalibration):
            metrics.update(callback.logged_metrics)
            validation_scores = callback.validation_scores
    with phase("checkpoint_reload"):
        best = restore_best_weights(trainer, model)
    if cfg.get("test"):
        with phase("closed_set_test"):
            trainer.test(model, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("evaluate"):
        with phase("ood_evaluation"):
            evaluation = evaluate(
                model,
                datamodule,
                cfg.ood,
                trainer.strategy.root_device,
                curve_rule(to_plain(cfg.calibration)),
                validation_scores,
            )
        metrics.update({k: v for k, v in evaluation.metrics.items() if isinstance(v, float)})
        if trainer.is_global_zero:
            history = next((c.epochs for c in trainer.callbacks if isinstance(c, EpochHistory)), [])
            with phase("report"):
                write_results(
                    cfg.paths.output_dir,
                    evaluation,
                    model,
                    describe(cfg, best),
                    history,
                    trainer.loggers,
                    cfg.seed,
                    **cfg.get("report", {}),
                )
    return metrics, best, {"trainer": trainer, "model": model, "datamodule": datamodule}


def check_resumable(ckpt_path: str, model_target: str) -> None:
    """Refuse a checkpoint that is unreadable or was written by another kind of model."""
    written_by = (read_checkpoint(ckpt_path).get(CONFIG_KEY) or {}).get("model", {}).get("_target_")
    if written_by != model_target:
        raise CheckpointError(
            f"checkpoint {ckpt_path} was written by {written_by or 'something other than osr'}, "
            f"but this run builds {model_target}. Pass the model the checkpoint was trained with "
            "(model=baseline or model=mlae) or another checkpoint."
        )


@rank_zero_only
def _print_summary(metrics: dict[str, float], best: str | None, output_dir: str) -> None:
    lines = [
        f"best val acc  {metrics.get('val/acc_best', float('nan')):.4f}",
        f"test acc      {metrics.get('test/acc', float('nan')):.4f}",
        f"open-set acc  {metrics.get('open_set.accuracy', float('nan')):.4f}"
        f" (known vs unknown {metrics.get('open_set.binary_accuracy', float('nan')):.4f})",
        f"best weights  {best or 'not checkpointed (last weights used)'}",
        f"run directory {output_dir}",
    ]
    log.info("summary\n  " + "\n  ".join(lines))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exits_on_user_error
def main(cfg: DictConfig) -> float | None:
    check_config(cfg, "train")
    prepare_wandb()
    try:
        metrics, _ = train(cfg)
    finally:
        finish_wandb()  # in a multirun, the next job must start its own W&B run
    return objective(metrics, cfg.get("optimized_metric"))


def objective(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweeper optimizes: ``optimized_metric`` of this run."""
    if not name:
        return None
    if name not in metrics:
        raise OSRError(
            f"optimized_metric={name} was not produced by this run; it produced "
            f"{', '.join(sorted(metrics))}. Set optimized_metric= to one of these."
        )
    return metrics[name]


# Hydra plugins behind optional extras: (module, extra, what)
OPTUNA = ("hydra_plugins.hydra_optuna_sweeper", "sweep", "the Optuna sweeper plugin")
SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "cluster", "the submitit launcher plugin")
SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def _plugin_needed(arg: str) -> tuple[str, str, str] | None:
    key, _, value = arg.lstrip("+~").partition("=")
    if key == "hparams_search":
        return OPTUNA
    if key == "hydra/launcher" and value in SUBMITIT_LAUNCHERS:
        return SUBMITIT
    return None


def require_plugins(argv: list[str]) -> None:
    """Say how to install an optional Hydra plugin that an override needs, rather than let Hydra
    report a missing config (``hydra/sweeper/optuna``, ``hydra/launcher/submitit_slurm``)."""
    for arg in argv:
        needed = _plugin_needed(arg)
        if needed is None:
            continue
        module, extra, what = needed
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            print(
                f"error: {arg} needs {what}, which is not installed in {sys.prefix}. "
                f'Install the {extra} extra: pip install -e ".[{extra}]"',
                file=sys.stderr,
            )
            sys.exit(2)


if __name__ == "__main__":
    require_plugins(sys.argv[1:])
    main()
