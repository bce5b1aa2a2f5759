"""Hydra plumbing shared by the entry points."""

import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from osr.utils.errors import OSRError

ROOT_DIR = Path(__file__).resolve().parents[2]  # the repository: osr/utils/config.py
CONFIG_DIR = str(ROOT_DIR / "conf")
log = logging.getLogger("osr.config")
# a key an interpolation reads, ``${data.std}`` or ``${split}`` (not a resolver, ``${oc.env:...}``)
INTERPOLATED_KEY = re.compile(r"\$\{([A-Za-z_][\w]*)[\w.\[\]]*\}")


def _sweep_group() -> str | None:
    """The sweep directory's name inside a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name


def _item(sequence: ListConfig, index: int) -> Any:
    """``${osr_item:${splits},${split}}``: one entry of a list, chosen by another key."""
    if not 0 <= int(index) < len(sequence):
        raise OSRError(f"index {index} is out of range: choose 0..{len(sequence) - 1}")
    return sequence[int(index)]


def _as_list(value: Any) -> list[Any]:
    """``${osr_list:${data.std}}``: a list of one value, or the list itself (per channel)."""
    return list(value) if isinstance(value, ListConfig | list | tuple) else [value]


def _resumed_run(task_name: str, ckpt_path: str | None) -> Path | None:
    """The run directory that ``osr.train ckpt_path=<run>/checkpoints/x.ckpt`` continues."""
    if task_name == "train" and ckpt_path:
        ckpt = Path(ckpt_path).expanduser().resolve()
        if ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent
    return None


def _run_dir(task_name: str, ckpt_path: str | None, fresh: str) -> str:
    """Resuming training continues in the checkpoint's run directory, so the run keeps its
    best-checkpoint record; everything else gets a ``fresh`` directory."""
    run = _resumed_run(task_name, ckpt_path)
    return str(run) if run else fresh


def _hydra_subdir(task_name: str, ckpt_path: str | None, stamp: str) -> str:
    """A resumed run records its config beside the original ``.hydra``, never over it."""
    return f".hydra-resumed-{stamp}" if _resumed_run(task_name, ckpt_path) else ".hydra"


OmegaConf.register_new_resolver("osr_root", lambda: str(ROOT_DIR), replace=True)
OmegaConf.register_new_resolver("osr_run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("osr_hydra_subdir", _hydra_subdir, replace=True)
OmegaConf.register_new_resolver("osr_item", _item, replace=True)
OmegaConf.register_new_resolver("osr_list", _as_list, replace=True)
OmegaConf.register_new_resolver("osr_sweep_group", _sweep_group, replace=True)

F = TypeVar("F", bound=Callable[..., Any])


def exits_on_user_error(task: F) -> F:
    """Turn an ``OSRError`` into its message on stderr and exit status 2, no traceback."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except OSRError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except InstantiationException as e:
            # Hydra wraps what a constructor raises; a user error inside is still one
            if not isinstance(e.__cause__, OSRError):
                raise
            print(f"error: {e.__cause__}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group such as ``callbacks`` or ``logger``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (safe to store in checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """Hydra config nodes as plain containers, so checkpoints hold only primitive types."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def instantiate_module(config: Mapping[str, Any], **kwargs: Any) -> Any:
    """The LightningModule of a run's config: ``model`` built with the run's ``objective`` and
    ``detectors``, groups of their own at the top level (so ``objective.gamma=2`` sets them)."""
    return instantiate(
        config["model"],
        objective=plain(config.get("objective")),
        detectors=plain(config.get("detectors")),
        **kwargs,
    )


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def declared_keys(config_name: str) -> set[str]:
    """The top-level keys of ``conf/<config_name>.yaml``: its own and its defaults' groups."""
    primary = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / f"{config_name}.yaml"))
    keys = {key for key in primary if key != "defaults"} | {"hydra"}
    for entry in primary.get("defaults", []):  # type: ignore[union-attr]
        if isinstance(entry, dict):
            group = next(iter(entry)).removeprefix("override ").lstrip("/")
            package = group.partition("@")[2] or group
            keys.add(package.split("/")[0].split(".")[0])
    return keys


def check_config(cfg: DictConfig, config_name: str) -> None:
    """Say before anything runs what the composed config holds that nothing reads: a warning
    per top-level key that ``conf/<config_name>.yaml`` does not declare and no interpolation
    reads (``+max_epochs=1``, a group file whose ``# @package`` line puts it elsewhere); an
    error for an objective under ``model``, which would train cross-entropy."""
    if "objective" in (cfg.get("model") or {}):
        raise OSRError(
            "model.objective is set, but the objective is read from the top-level `objective` "
            "group: drop the `# @package model.objective` line of conf/objective/<name>.yaml, "
            "and set its parameters as objective.<key>=<value> (`objective:` in an experiment "
            "file), not model.objective.<key>."
        )
    container = OmegaConf.to_container(cfg, resolve=False)
    read = {m.group(1) for text in _strings(container) for m in INTERPOLATED_KEY.finditer(text)}
    known = declared_keys(config_name) | read
    for key in sorted(set(cfg) - known):
        log.warning(
            "config key %s is not read by osr.%s and has no effect (a typo, a `+key` meant "
            "for a group such as +trainer.%s, or a config file whose `# @package` line put it "
            "at the top level?)",
            key,
            config_name,
            key,
        )
