"""The README works verbatim (issue 32): its recipes under "Adding things", installed as
written, train with the options they name, and every command it shows composes into a config
whose every key is read."""

import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from osr.train import train
from osr.utils.config import CONFIG_DIR, check_config, instantiate_module
from tests.conftest import REPO, TINY_TRAINING

README = (REPO / "README.md").read_text()
# a fenced block whose first line names the file it is: "# osr/objectives/focal.py"
RECIPE = re.compile(r"```(?:python|yaml)\n# ((?:osr|conf)/\S+)\n(.*?)```", re.DOTALL)
# a command line of a shell block, or one quoted in the text
COMMAND = re.compile(
    r"(?:^|`)python -m osr\.(train|evaluate|calibrate|predict)((?: [^`#\n]+)?)", re.MULTILINE
)
ENTRY_ARGS = {"evaluate": ["ckpt_path=x"], "calibrate": ["ckpt_path=x"]}
ENTRY_ARGS["predict"] = ["ckpt_path=x", "inputs=x"]


def recipes() -> dict[str, str]:
    """The README's recipe files by path."""
    return {path: text for path, text in RECIPE.findall(README)}


def commands() -> list[tuple[str, list[str]]]:
    """(entry point, overrides) of every command the README shows: placeholders in paths
    (<run>/checkpoints/...) become a folder, a sweep's lists their first value; a command
    that is a template (objective=<name>) is left out."""
    found = []
    for entry, args in COMMAND.findall(README):
        pairs = [arg.split("=", 1) for arg in shlex.split(args) if "=" in arg]
        if any("<" in key or re.fullmatch(r"<[^>]*>", value) for key, value in pairs):
            continue
        overrides = []
        for key, value in pairs:
            value = re.sub(r"<[^>]*>", "x", value)
            overrides.append(f"{key}={value if value.startswith('[') else value.split(',')[0]}")
        found.append((entry, overrides))
    return found


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The recipes as a user writes them: config files on Hydra's search path, Python modules
    importable under their names. Returns the search path override."""
    for path, text in recipes().items():
        if path.startswith("conf/"):
            target = tmp_path / path.removeprefix("conf/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        else:
            name = path.removesuffix(".py").replace("/", ".")
            module = types.ModuleType(name)
            exec(compile(text, path, "exec"), module.__dict__)
            monkeypatch.setitem(sys.modules, name, module)
    return f"hydra.searchpath=[file://{tmp_path}]"


def composed(config_name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, [*ENTRY_ARGS.get(config_name, []), *overrides])


def test_the_readme_holds_its_recipes():
    assert set(recipes()) >= {
        "osr/objectives/focal.py",
        "conf/objective/focal.yaml",
        "conf/detectors/knn20.yaml",
    }
    assert len(commands()) >= 25


def test_the_objective_recipe_trains_with_its_parameter(installed):
    """objective=focal objective.gamma=...: gamma 0 is cross-entropy, gamma 2 lower."""
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    losses = {}
    for gamma in (0, 2):
        cfg = composed(
            "train", installed, "model=baseline", "objective=focal", f"objective.gamma={gamma}"
        )
        module = instantiate_module(cfg, class_names=[str(c) for c in range(10)]).eval()
        assert type(module.objective).__name__ == "FocalLoss"
        loss, logits, _ = module._loss(x, y)
        losses[gamma] = (loss.item(), F.cross_entropy(logits, y).item())
    assert losses[0][0] == pytest.approx(losses[0][1])
    assert losses[2][0] < losses[2][1]


def test_the_detector_recipe_adds_its_detector(installed):
    cfg = composed("train", installed, "model=baseline", "detectors=knn20")
    module = instantiate_module(cfg, class_names=[str(c) for c in range(10)])
    assert "knn20" in module.detectors and "knn" in module.detectors


@pytest.mark.parametrize(("entry", "overrides"), commands())
def test_every_readme_command_composes_and_is_read_whole(entry, overrides, installed, caplog):
    cfg = composed(entry, installed, *overrides)
    check_config(cfg, entry)
    assert not [r for r in caplog.records if r.name == "osr.config"]


@pytest.mark.slow
def test_the_objective_recipe_trains_calibrates_and_evaluates(installed, train_cfg):
    metrics, objects = train(train_cfg(installed, "objective=focal", *TINY_TRAINING))
    assert type(objects["model"].objective).__name__ == "FocalLoss"
    assert 0 <= metrics["open_set.accuracy"] <= 1
