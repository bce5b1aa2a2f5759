"""python -m osr.train: train, calibrate thresholds, test (and evaluate)."""

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from osr.checkpoints import StoreRunConfig, restore_best_weights
from osr.config import exits_on_user_error, instantiate_group, to_plain

log = logging.getLogger("osr.train")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, load the best weights, test. Returns the logged metrics and the objects made."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, class_names=datamodule.class_names)
    run_config = to_plain(cfg)
    run_config.pop("hydra", None)
    callbacks = [*instantiate_group(cfg.get("callbacks")), StoreRunConfig(run_config)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")) or False
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = restore_best_weights(trainer, model)
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    _print_summary(metrics, best, cfg.paths.output_dir)
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule}


@rank_zero_only
def _print_summary(metrics: dict[str, float], best: str | None, output_dir: str) -> None:
    lines = [
        f"best val acc  {metrics.get('val/acc_best', float('nan')):.4f}",
        f"test acc      {metrics.get('test/acc', float('nan')):.4f}",
        f"best weights  {best or 'not checkpointed (last weights used)'}",
        f"run directory {output_dir}",
    ]
    log.info("summary\n  " + "\n  ".join(lines))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exits_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
