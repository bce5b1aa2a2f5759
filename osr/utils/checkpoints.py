"""Reading and rewriting checkpoints safely (``weights_only=True``, atomic writes); what is read
is in today's format (``osr.utils.migrations``), what is written records it."""

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from osr.utils.config import instantiate_module, plain
from osr.utils.errors import CheckpointError
from osr.utils.io import atomic_write
from osr.utils.migrations import CONFIG_KEY, migrate, stamp

NO_CONFIG = (
    "the checkpoint holds no osr run configuration (it was not written by osr.train); "
    "pass a checkpoint from an osr run directory."
)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU without running any code stored in it, brought to today's
    format if an older osr wrote it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt_path=<path to .ckpt>.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln]
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"data ({(lines or ['unsafe pickle'])[0]}); nothing in it was run. "
            "Only load checkpoints written by osr."
        ) from None
    except Exception as e:  # arbitrary bytes fail in many ways inside torch.load
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a checkpoint ({str(e).splitlines()[0]}). "
            "Use the run's other checkpoint (best.ckpt or last.ckpt) or retrain."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict).")
    try:
        return migrate(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    stamp(ckpt)
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def write_thresholds(path: str | Path, module: pl.LightningModule) -> bool:
    """Store ``module``'s calibrated thresholds and fitted detectors in the checkpoint at
    ``path`` if it holds the weights they were fitted on; returns whether it did.

    Thresholds fitted on one set of weights mean nothing for another: a ``last.ckpt`` from a
    later epoch than the best weights keeps none (and must be calibrated on its own).
    """
    ckpt = read_checkpoint(path)
    saved_names = module.state_dict().keys()  # persistent buffers only
    weights = {
        name: tensor
        for name, tensor in (*module.named_parameters(), *module.named_buffers())
        if name in saved_names
    }
    saved = ckpt["state_dict"]
    if not all(
        name in saved and torch.equal(saved[name], tensor.detach().cpu())
        for name, tensor in weights.items()
    ):
        return False
    ckpt.update(cpu_tensors(module.open_set_state()))
    save_checkpoint(ckpt, path)
    return True


def cpu_tensors(value: Any) -> Any:
    """``value`` with every tensor in it detached and on the CPU (dicts and lists walked)."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: cpu_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_tensors(v) for v in value)
    return value


def module_from_checkpoint(ckpt: dict[str, Any]) -> pl.LightningModule:
    """Rebuild the LightningModule a checkpoint was written from: weights, thresholds and
    fitted detectors loaded, nothing refitted."""
    config = ckpt.get(CONFIG_KEY)
    if not config:
        raise CheckpointError(NO_CONFIG)
    hparams = ckpt.get("hyper_parameters", {})
    module = instantiate_module(
        config, class_names=hparams["class_names"], input_shape=hparams["input_shape"]
    )
    module.load_open_set_state(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"the checkpoint's weights do not fit {config['model']['_target_']} "
            f"({str(e).splitlines()[0]})."
        ) from None
    return module


def data_dir_here(
    dataset: Mapping[str, Any],
    run_config: Mapping[str, Any],
    data_dir: str | None,
    here: str | None,
) -> str | None:
    """Where a dataset of a checkpoint's run lies on this machine: ``data_dir`` when given
    (``data.data_dir=...``); else the directory the run read it from, when the run named one
    of its own (``data.data_dir=/x``, not its ``paths.data_dir``) or ``here`` is None; else
    ``here``, this machine's ``paths.data_dir``."""
    if data_dir is not None:
        return str(data_dir)
    own = dataset.get("data_dir")
    trained_default = (run_config.get("paths") or {}).get("data_dir")
    if here is None or (own and trained_default and own != trained_default):
        return own
    return here


def datamodule_from_checkpoint(
    ckpt: dict[str, Any], overrides: Any, here: str | None = None
) -> pl.LightningDataModule:
    """The checkpoint's data config with ``overrides`` applied (e.g. this machine's
    cache_dir), its data_dir chosen by ``data_dir_here`` with ``here`` (None: the run's)."""
    config = ckpt.get(CONFIG_KEY)
    if not config:
        raise CheckpointError(NO_CONFIG)
    overrides = dict(plain(overrides) or {})
    data_dir = data_dir_here(config["data"], config, overrides.pop("data_dir", None), here)
    return instantiate(OmegaConf.merge(config["data"], overrides, {"data_dir": data_dir}))


def restore_best_weights(trainer: pl.Trainer, module: pl.LightningModule) -> str | None:
    """Load the best checkpoint's weights, thresholds and fitted detectors into ``module``;
    returns its path."""
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback else ""
    if not best or not Path(best).is_file():
        return None
    ckpt = read_checkpoint(best)
    module.load_open_set_state(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    return best
