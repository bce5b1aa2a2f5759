"""Checkpoints written by older osr load into today's format and evaluate to the figures they
had (issue 31). The fixtures are genuine checkpoints of older commits, trained on the tests'
tiny data by tests/fixtures/make_old_checkpoints.py, beside the metrics.json each wrote."""

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import osr
from osr.calibrate import calibrate_checkpoint
from osr.callbacks import StoreRunConfig
from osr.evaluate import evaluate_checkpoint
from osr.objectives import IILoss
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint, save_checkpoint
from osr.utils.config import CONFIG_DIR
from osr.utils.errors import CheckpointError
from osr.utils.migrations import FORMAT, STEPS, migrate

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = "old_checkpoints.json"


def data_digest(root: Path) -> str:
    """sha256 of the tiny data's image and label files (paths and bytes, in path order)."""
    digest = hashlib.sha256()
    files = [*root.glob("*/raw/*-ubyte"), *root.glob("CIFAR10/*/*/*.jpg")]
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def manifest() -> dict:
    path = FIXTURES / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


OLD = manifest()


def raw(name: str) -> dict:
    """A fixture as its commit wrote it, not migrated."""
    return torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OLD["runs"]))
def test_old_checkpoint_evaluates_to_the_figures_its_commit_wrote(name, evaluate_cfg, tiny_data):
    """What osr.evaluate does, on the data the checkpoint was trained and evaluated on: every
    figure of the commit's own metrics.json again (mlae_8902dcc: 'AutoencoderClassifier
    missing net' before migrations)."""
    assert data_digest(tiny_data) == OLD["data_digest"], (
        "tests/conftest.py's tiny data changed since the fixtures were made: rerun "
        "tests/fixtures/make_old_checkpoints.py"
    )
    cfg = evaluate_cfg(FIXTURES / f"{name}.pt", "device=cpu")
    evaluate_checkpoint(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    then = OLD["runs"][name]["metrics"]
    assert len(then) > 50
    for key, value in then.items():
        assert metrics[key] == (value if isinstance(value, list) else pytest.approx(value)), key


@pytest.mark.slow
def test_checkpoint_from_8902dcc_recalibrates_by_its_own_rule(tiny_data, tmp_path):
    """osr.calibrate without calibration=: the rule it was calibrated by (MeanStd, since
    moved to osr.scoring.thresholds) fits the thresholds its commit fitted."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "calibrate",
            overrides=[
                f"ckpt_path={FIXTURES / 'mlae_8902dcc.pt'}",
                f"paths.data_dir={tiny_data}",
                f"paths.output_dir={tmp_path}",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
            ],
        )
    calibrated = torch.load(calibrate_checkpoint(cfg), weights_only=True)
    assert (calibrated["osr_version"], calibrated["osr_format"]) == (osr.__version__, FORMAT)
    then = OLD["runs"]["mlae_8902dcc"]["metrics"]
    for name, value in calibrated["osr_thresholds"].items():
        assert value == pytest.approx(then[f"thresholds.{name}"]), name


def test_checkpoint_from_8902dcc_is_read_in_todays_format():
    old = raw("mlae_8902dcc")
    names = ("recon_l2", "binary_diff", "msp", "max_logit", "energy")  # its built-in scores
    legacy = dict(zip(names, old["state_dict"]["thresholds"].tolist(), strict=True))
    ckpt = read_checkpoint(FIXTURES / "mlae_8902dcc.pt")
    assert ckpt["osr_format"] == FORMAT and "osr_version" not in ckpt  # as written
    config, hparams = ckpt["osr_config"], ckpt["hyper_parameters"]
    for model in (config["model"], hparams):
        assert "classifier" not in model and model["net"]["_target_"] == "osr.models.ConvNet"
    assert tuple(hparams["input_shape"]) == (1, 28, 28)
    assert (config["data"]["channels"], config["data"]["image_size"]) == (1, 28)
    assert set(config["detectors"]) == set(legacy)
    assert "thresholds" not in ckpt["state_dict"]
    assert ckpt["osr_thresholds"] == pytest.approx(legacy)
    assert config["calibration"]["_target_"] == "osr.scoring.thresholds.MeanStd"
    assert config["callbacks"]["epoch_history"]["_target_"] == "osr.callbacks.EpochHistory"
    module = module_from_checkpoint(ckpt)  # strict: every weight in its place
    assert module.is_calibrated and module.threshold_dict() == pytest.approx(legacy)
    assert tuple(module.hparams.voting_scores) == ("recon_l2", "binary_diff")  # its own
    again = copy.deepcopy(ckpt)
    for step in STEPS:  # each step leaves a checkpoint past it as it is
        step(again)
    assert again.keys() == ckpt.keys() and again["osr_config"] == ckpt["osr_config"]
    assert again["state_dict"].keys() == ckpt["state_dict"].keys()


def test_checkpoint_from_before_natural_images_names_its_classifier_net():
    """74f90fa (2026-11-29): the autoencoder-classifier's ConvNet was model.classifier."""
    assert "classifier" in raw("mlae_74f90fa")["osr_config"]["model"]
    module = module_from_checkpoint(read_checkpoint(FIXTURES / "mlae_74f90fa.pt"))
    assert module.hparams.net["_target_"] == "osr.models.ConvNet"
    assert module.hparams.net["channels"] == [2, 4]


def test_ii_running_centers_become_its_class_means():
    """eb3a9bb (2026-11-27): II kept pytorch-ood's running centers and had no batch norm."""
    centers = raw("ii_eb3a9bb")["state_dict"]["objective.criterion.running_centers.running_centers"]
    module = module_from_checkpoint(read_checkpoint(FIXTURES / "ii_eb3a9bb.pt")).eval()
    assert torch.equal(module.objective.means, centers)
    z = torch.randn(5, len(centers))
    assert torch.allclose(module.objective.embedding_norm(z), z, rtol=1e-6, atol=0)


def test_the_objective_moves_from_model_to_the_top_level_of_the_config():
    """Issue 32: a checkpoint's ``model.objective`` becomes its ``objective``, which
    module_from_checkpoint builds the module with (without the step: cross-entropy)."""
    assert "objective" in raw("ii_eb3a9bb")["osr_config"]["model"]
    ckpt = read_checkpoint(FIXTURES / "ii_eb3a9bb.pt")
    assert "objective" not in ckpt["osr_config"]["model"]
    assert ckpt["osr_config"]["objective"]["_target_"] == "osr.objectives.IILoss"
    assert ckpt["hyper_parameters"]["objective"]["_target_"] == "osr.objectives.IILoss"
    assert isinstance(module_from_checkpoint(ckpt).objective, IILoss)


def test_cac_from_before_euclidean_distances_is_refused(tmp_path):
    """Before e9785d7 CAC scored squared distances: no rewrite gives its figures back."""
    objective = {"_target_": "osr.objectives.CACLoss"}
    model = {"_target_": "osr.modules.Classifier", "objective": objective}
    old = {
        "state_dict": {"objective.criterion._centers._params": torch.eye(6)},
        "osr_config": {"model": model},
    }
    torch.save(old, tmp_path / "cac.pt")
    with pytest.raises(CheckpointError, match="e9785d7.*Retrain"):
        read_checkpoint(tmp_path / "cac.pt")


def test_checkpoint_of_a_newer_format_is_refused(tmp_path):
    newer = {"state_dict": {}, "osr_format": FORMAT + 1, "osr_version": "9.0.0"}
    torch.save(newer, tmp_path / "new.pt")
    expected = f"osr 9.0.0 in checkpoint format {FORMAT + 1}.*update osr"
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint(tmp_path / "new.pt")


def test_written_checkpoints_record_osr_version_and_format(tmp_path):
    """Checkpoints from training (StoreRunConfig) and rewritten ones (osr.calibrate,
    thresholds after fit) alike."""
    ckpt = {"state_dict": {}}
    StoreRunConfig({"model": {}}).on_save_checkpoint(None, None, ckpt)
    assert (ckpt["osr_version"], ckpt["osr_format"]) == (osr.__version__, FORMAT)
    migrated = read_checkpoint(FIXTURES / "mlae_8902dcc.pt")
    save_checkpoint(migrated, tmp_path / "calibrated.pt")
    written = torch.load(tmp_path / "calibrated.pt", weights_only=True)
    assert (written["osr_version"], written["osr_format"]) == (osr.__version__, FORMAT)
    assert migrate(copy.deepcopy(written))["osr_config"] == written["osr_config"]
