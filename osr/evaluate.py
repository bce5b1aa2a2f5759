"""python -m osr.evaluate ckpt_path=...: open-set evaluation of a calibrated checkpoint, or
of an ensemble of them (``ensemble=[...]``)."""

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from osr.reporting.report import write_results
from osr.reporting.run_info import describe
from osr.reporting.run_record import commit, write_run_record
from osr.scoring.calibration import calibrate
from osr.scoring.ensemble import load_ensemble
from osr.scoring.operating_curve import curve_rule
from osr.scoring.test_sets import evaluate
from osr.utils.checkpoints import (
    CONFIG_KEY,
    data_dir_here,
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
)
from osr.utils.config import check_config, exits_on_user_error, instantiate_group
from osr.utils.errors import NotCalibratedError, OSRError
from osr.utils.io import write_json
from osr.utils.wandb_setup import finish_wandb, prepare_wandb

log = logging.getLogger("osr.evaluate")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def ood_config(cfg: DictConfig, ckpt: dict[str, Any]) -> DictConfig:
    """The OOD sets of ``ood=<name>`` when one is given, else those the checkpoint was trained
    with, read from this machine's data directories, with the keys set in ``cfg.ood``
    (``ood.limit``, ``ood.normalization``) replacing the checkpoint's."""
    if "sets" in cfg.ood:
        return cfg.ood
    run_config = ckpt[CONFIG_KEY]
    trained = run_config.get("ood") or {}
    requested, machine = cfg.data.get("data_dir"), cfg.paths.data_dir
    here = {
        "sets": {
            name: {
                "data_dir": data_dir_here(dataset, run_config, requested, machine),
                "cache_dir": cfg.data.cache_dir,
            }
            for name, dataset in (trained.get("sets") or {}).items()
        }
    }
    return OmegaConf.merge(trained, here, cfg.ood)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("ensemble"):
        return evaluate_ensemble(cfg)
    ckpt = read_checkpoint(cfg.ckpt_path)
    module = module_from_checkpoint(ckpt)
    if not module.is_calibrated:
        raise NotCalibratedError(
            f"checkpoint {cfg.ckpt_path} has no thresholds: calibrate it first with "
            f"`python -m osr.calibrate ckpt_path={cfg.ckpt_path}` and evaluate the "
            "checkpoints/calibrated.ckpt it writes."
        )
    datamodule = datamodule_from_checkpoint(ckpt, cfg.data, cfg.paths.data_dir)
    history = ckpt.get("callbacks", {}).get("EpochHistory", {}).get("epochs", [])
    return _evaluate(cfg, module, datamodule, ckpt, str(cfg.ckpt_path), history)


def evaluate_ensemble(cfg: DictConfig) -> dict[str, Any]:
    """``ckpt_path`` and the checkpoints of ``ensemble`` scored as one model: the members'
    scores put on a common scale and the ensemble's thresholds fitted anew by ``ckpt_path``'s
    rule on their shared calibration split (thresholds.json; the scale on the validation split
    where the calibration split is one of its own)."""
    paths = [str(cfg.ckpt_path), *map(str, cfg.ensemble)]
    ensemble, ckpt = load_ensemble(paths)
    datamodule = datamodule_from_checkpoint(ckpt, cfg.data, cfg.paths.data_dir)
    datamodule.setup("validate")
    ensemble.to(resolve_device(cfg.device))
    if not ckpt[CONFIG_KEY].get("calibration"):
        raise OSRError(f"{paths[0]} records no calibration rule for the ensemble: retrain it.")
    rule = instantiate(ckpt[CONFIG_KEY]["calibration"])
    scales = ensemble.fit_scales(datamodule)  # the members' common scale, on the same images
    calibration = calibrate(ensemble, datamodule, rule)
    record = calibration.record | {"ensemble": paths, "member_scores": scales}
    write_json(Path(cfg.paths.output_dir) / "thresholds.json", record)
    return _evaluate(
        cfg, ensemble, datamodule, ckpt, " + ".join(paths), [], calibration.validation_scores
    )


def _evaluate(
    cfg: DictConfig,
    module: Any,
    datamodule: Any,
    ckpt: dict[str, Any],
    checkpoint: str,
    history: list[dict[str, float]],
    validation_scores: dict[str, Any] | None = None,
) -> dict[str, Any]:
    run_cfg = DictConfig(ckpt["osr_config"])
    rule = curve_rule(ckpt["osr_config"].get("calibration"))
    ood = ood_config(cfg, ckpt)
    device = resolve_device(cfg.device)
    evaluation = evaluate(module, datamodule, ood, device, rule, validation_scores)
    run_cfg.ood = ood
    write_results(
        cfg.paths.output_dir,
        evaluation,
        module,
        describe(run_cfg, checkpoint),
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
    check_config(cfg, "evaluate")
    started = time.time()
    commit()  # the code this process runs, recorded in run.json at the end
    prepare_wandb()
    try:
        evaluate_checkpoint(cfg)
    finally:
        finish_wandb()
    write_run_record(cfg.paths.output_dir, started)


if __name__ == "__main__":
    main()
