"""The README works verbatim (issue 32): its recipes under "Adding things", installed as
written, train with the options they name, and every command it shows composes into a config
whose every key is read."""

import re
import shlex
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from osr.evaluate import evaluate_checkpoint
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
# a script of the user's: "# make_mnist_rot90.py: what it does"
SCRIPT = re.compile(r"```python\n# (\w+\.py): .*?\n(.*?)```", re.DOTALL)
ENTRY_ARGS = {"evaluate": ["ckpt_path=x"], "calibrate": ["ckpt_path=x"]}
ENTRY_ARGS["predict"] = ["ckpt_path=x", "inputs=x"]


def recipes() -> dict[str, str]:
    """The README's recipe files by path."""
    return {path: text for path, text in RECIPE.findall(README)}


def scripts() -> dict[str, str]:
    """The README's scripts by file name."""
    return dict(SCRIPT.findall(README))


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
        "conf/data/mnist_rot90.yaml",
        "conf/ood/for/mnist_rot90.yaml",
        "conf/data/shapes.yaml",
        "conf/ood/for/shapes.yaml",
    }
    assert set(scripts()) == {"make_mnist_rot90.py"}
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


def write_shapes(folder: Path, per_class: int) -> None:
    """PNGs in <split>/<class>/: a coloured square on a dark background, its colour the class."""
    g = torch.Generator().manual_seed(0)
    for c, colour in enumerate(([255, 40, 40], [40, 255, 40], [40, 40, 255])):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            image = torch.randint(0, 50, (3, 32, 32), dtype=torch.uint8, generator=g)
            top, left = torch.randint(0, 16, (2,), generator=g).tolist()
            image[:, top : top + 16, left : left + 16] = torch.tensor(colour)[:, None, None]
            torchvision.io.write_png(image, str(folder / f"class{c}" / f"{i}.png"))


@pytest.mark.slow
def test_the_dataset_recipes_train_as_known_and_ood_sets_and_evaluate(
    installed, train_cfg, evaluate_cfg, tiny_data, tmp_path, monkeypatch
):
    """As the README says: the user's script writes data/mnist_rot90/ (here from the tiny
    MNIST), a model trains on it and osr.evaluate of its checkpoint gives the same figures;
    a model trained on an image folder (data/shapes/) is evaluated on it as an OOD set."""
    user = tmp_path / "user"
    shutil.copytree(tiny_data / "MNIST", user / "data" / "MNIST")
    monkeypatch.chdir(user)
    exec(compile(scripts()["make_mnist_rot90.py"], "make_mnist_rot90.py", "exec"), {})
    write_shapes(user / "data" / "shapes" / "train", per_class=60)
    write_shapes(user / "data" / "shapes" / "test", per_class=10)
    here = (installed, f"paths.root_dir={user}")

    cfg = train_cfg(*here, "data=mnist_rot90", "model=baseline", *TINY_TRAINING)
    metrics, objects = train(cfg)
    rot90 = objects["datamodule"]
    assert (rot90.name, rot90.class_names[3]) == ("mnist_rot90", "three")
    mnist = torchvision.datasets.MNIST(str(user / "data"), train=False)
    expected = mnist.data.rot90(1, (1, 2))[rot90.test_set.tensors[1] == 3][0]
    assert torch.equal(rot90.test_set.tensors[0][rot90.test_set.tensors[1] == 3][0, 0], expected)
    again = evaluate_checkpoint(evaluate_cfg(Path(cfg.paths.output_dir) / "checkpoints/best.ckpt"))
    assert again["closed_set.accuracy"] == pytest.approx(metrics["closed_set.accuracy"])
    assert "ood.fashion_mnist.scores.msp.auroc" in again

    cfg = train_cfg(
        *here,
        "data=shapes",
        "model=baseline",
        "+data@ood.sets.mnist_rot90=mnist_rot90",
        *TINY_TRAINING,
        "data.val_size=80",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "shapes_run")
    metrics, objects = train(cfg)
    assert objects["datamodule"].class_names == ["class0", "class1", "class2"]
    assert objects["datamodule"].input_shape == (3, 32, 32)
    assert 0 <= metrics["ood.mnist_rot90.scores.msp.auroc"] <= 1
