"""python -m osr.calibrate ckpt_path=...: refit a checkpoint's thresholds without retraining."""

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from osr.callbacks import ThresholdCalibration
from osr.utils.checkpoints import (
    CONFIG_KEY,
    cpu_tensors,
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from osr.utils.config import check_config, exits_on_user_error, to_plain
from osr.utils.errors import OSRError

log = logging.getLogger("osr.calibrate")


def calibrate_checkpoint(cfg: DictConfig) -> Path:
    """Calibrate ``cfg.ckpt_path`` and write the result to the run directory.

    The checkpoint's fitted detectors are kept as they are; ``detectors=...`` replaces its
    detector set, and every detector of the new set that needs it is fitted on the
    checkpoint's training split.
    """
    ckpt = read_checkpoint(cfg.ckpt_path)
    module = module_from_checkpoint(ckpt)
    if cfg.get("detectors") is not None:
        detectors = detectors_config(cfg.detectors, ckpt[CONFIG_KEY])
        module.replace_detectors(detectors)
        ckpt[CONFIG_KEY]["detectors"] = detectors
    datamodule = datamodule_from_checkpoint(ckpt, cfg.data, cfg.paths.data_dir)
    rule = calibration_config(cfg, ckpt[CONFIG_KEY])
    callback = ThresholdCalibration(
        instantiate(rule), cfg.paths.output_dir, checkpoint=str(cfg.ckpt_path)
    )
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[callback], logger=False, enable_checkpointing=False
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    out = Path(cfg.paths.output_dir) / "checkpoints" / "calibrated.ckpt"
    if trainer.is_global_zero:
        ckpt.update(cpu_tensors(module.open_set_state()))
        ckpt[CONFIG_KEY]["calibration"] = rule  # the rule now in force
        save_checkpoint(ckpt, out)
        log.info("thresholds %s -> %s", module.threshold_dict(), out)
    return out


def calibration_config(cfg: DictConfig, run_config: dict[str, Any]) -> dict[str, Any]:
    """The rule named by ``calibration=...``, else the one the checkpoint was calibrated by."""
    if cfg.get("calibration") is not None:
        return to_plain(cfg.calibration)
    if not run_config.get("calibration"):
        raise OSRError(
            f"{cfg.ckpt_path} records no calibration rule: name one, e.g. "
            "`calibration=conformal calibration.alpha=0.01` or `calibration=mean_std`."
        )
    return dict(run_config["calibration"])


def detectors_config(detectors: DictConfig, run_config: dict[str, Any]) -> dict[str, Any]:
    """The ``detectors`` config resolved against the checkpoint's run (``${data.std}``...)."""
    merged = OmegaConf.create(
        {**run_config, "detectors": OmegaConf.to_container(detectors, resolve=False)}
    )
    return to_plain(merged.detectors)


@hydra.main(version_base="1.3", config_path="../conf", config_name="calibrate")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    check_config(cfg, "calibrate")
    calibrate_checkpoint(cfg)


if __name__ == "__main__":
    main()
