"""No config that is silently ignored (issue 32): the entry points name a composed key that
nothing reads before anything runs, and refuse an objective where the module never reads it."""

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from osr.utils.config import CONFIG_DIR, check_config
from osr.utils.errors import OSRError
from tests.conftest import run_module

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
# what each entry point needs to compose, and its config name
ENTRY_POINTS = {
    "train": [],
    "evaluate": ["ckpt_path=x.ckpt"],
    "calibrate": ["ckpt_path=x.ckpt"],
    "predict": ["ckpt_path=x.ckpt", "inputs=x"],
}


def composed(config_name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=[*ENTRY_POINTS[config_name], *overrides])


def unread(cfg: DictConfig, config_name: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages of ``check_config``'s warnings."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="osr.config"):
        check_config(cfg, config_name)
    return [r.getMessage() for r in caplog.records if r.name == "osr.config"]


@pytest.mark.parametrize(
    ("config_name", "overrides"),
    [
        *((name, []) for name in ENTRY_POINTS),
        *(("train", [f"experiment={name}"]) for name in EXPERIMENTS),
        ("train", ["hparams_search=mlae_optuna"]),
        ("train", ["debug=fast"]),
        # a sweep's own key, read by an interpolation of the checkpoint's path
        ("evaluate", ["+split=0", "ckpt_path=runs/${split}/best.ckpt"]),
    ],
)
def test_every_shipped_config_is_read_whole(config_name, overrides, caplog):
    assert unread(composed(config_name, *overrides), config_name, caplog) == []


@pytest.mark.parametrize("config_name", list(ENTRY_POINTS))
def test_a_key_nothing_reads_is_named(config_name, caplog):
    """``+max_epochs=1`` (meant for the trainer) ran without it, and said nothing."""
    messages = unread(composed(config_name, "+max_epochs=1"), config_name, caplog)
    assert len(messages) == 1
    assert "config key max_epochs is not read" in messages[0]
    assert f"osr.{config_name}" in messages[0]


def test_a_group_file_that_lands_at_the_top_level_is_named(tmp_path, caplog):
    """A calibration rule whose `# @package` line puts it elsewhere than `calibration`."""
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "mine.yaml").write_text(
        "# @package my_rule\n_target_: osr.scoring.thresholds.MeanStd\nk: 2\n"
    )
    cfg = composed("train", f"hydra.searchpath=[file://{tmp_path}]", "calibration=mine")
    messages = unread(cfg, "train", caplog)
    assert len(messages) == 1 and "config key my_rule is not read" in messages[0]


def test_an_objective_under_model_is_refused(tmp_path):
    """An objective file that keeps the `# @package model.objective` line of before issue 32
    would train cross-entropy: refused, with the fix."""
    (tmp_path / "objective").mkdir()
    (tmp_path / "objective" / "old.yaml").write_text(
        "# @package model.objective\n_target_: osr.objectives.LabelSmoothing\n"
    )
    cfg = composed("train", f"hydra.searchpath=[file://{tmp_path}]", "objective=old")
    with pytest.raises(OSRError, match=r"model.objective is set.*# @package model.objective"):
        check_config(cfg, "train")


@pytest.mark.slow  # starts osr.train, which stops at the missing checkpoint before any fit
@pytest.mark.parametrize("module", [f"osr.{name}" for name in ENTRY_POINTS])
def test_each_entry_point_names_an_unread_key_before_it_runs(module, tmp_path):
    """``+max_epochs=1``: before issue 32 the run went on without a word of it."""
    args = [f"ckpt_path={tmp_path / 'missing.ckpt'}", "+max_epochs=1", f"hydra.run.dir={tmp_path}"]
    result = run_module(module, *args, *(["inputs=x"] if module == "osr.predict" else []))
    assert "config key max_epochs is not read" in result.stdout + result.stderr
    assert result.returncode == 2 and "missing.ckpt does not exist" in result.stderr
