"""python -m osr.evaluate ckpt_path=...: open-set evaluation of a calibrated checkpoint."""

import logging
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from osr.reporting.report import write_results
from osr.reporting.run_info import describe
from osr.scoring.conformal import curve_rule
from osr.scoring.test_sets import evaluate
from osr.utils.checkpoints import (
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
)
from osr.utils.config import exits_on_user_error, instantiate_group
from osr.utils.errors import NotCalibratedError
from osr.utils.wandb_setup import finish_wandb, prepare_wandb

log = logging.getLogger("osr.evaluate")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    ckpt = read_checkpoint(cfg.ckpt_path)
    module = module_from_checkpoint(ckpt)
    if not module.is_calibrated:
        raise NotCalibratedError(
            f"checkpoint {cfg.ckpt_path} has no thresholds: calibrate it first with "
            f"`python -m osr.calibrate ckpt_path={cfg.ckpt_path}` and evaluate the "
            "checkpoints/calibrated.ckpt it writes."
        )
    datamodule = datamodule_from_checkpoint(ckpt, cfg.data)
    run_cfg = DictConfig(ckpt["osr_config"])
    rule = curve_rule(ckpt["osr_config"].get("calibration"))
    evaluation = evaluate(module, datamodule, cfg.ood, resolve_device(cfg.device), rule)
    history = ckpt.get("callbacks", {}).get("EpochHistory", {}).get("epochs", [])
    run_cfg.ood = cfg.ood
    write_results(
        cfg.paths.output_dir,
        evaluation,
        module,
        describe(run_cfg, str(cfg.ckpt_path)),
        history,
        instantiate_group(cfg.get("logger")),
        cfg.seed,
        **cfg.report,
    )
    log.info(
        "open-set accuracy %.4f, known vs unknown %.4f -> %s",
        evaluation.metrics["open_set.accuracy"],
        evaluation.metrics["open_set.binary_accuracy"],
        cfg.paths.output_dir,
    )
    return evaluation.metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    prepare_wandb()
    try:
        evaluate_checkpoint(cfg)
    finally:
        finish_wandb()


if __name__ == "__main__":
    main()
