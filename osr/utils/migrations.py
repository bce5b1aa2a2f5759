"""Checkpoints of older osr brought to today's format before anything reads them.

Every checkpoint osr writes records the osr version that wrote it (``osr_version``) and the
format of its config, hyperparameters and open-set state (``osr_format``, ``FORMAT``). A
change to osr that would leave an older checkpoint unloadable, or loaded into a model that
scores differently, adds a step to ``STEPS`` (so ``FORMAT`` goes up by one): a function that
rewrites a checkpoint of the format before it into the format after it, in place.

Checkpoints written before formats were recorded count as format 0 and pass through every
step; each step leaves a checkpoint it finds already past it as it is. What changed since
8902dcc (2026-11-26), and the step that handles it (tests/test_migration.py evaluates
checkpoints written by 8902dcc, eb3a9bb and 74f90fa):

- 666f23f, detectors: thresholds by detector name (``osr_thresholds``) instead of a
  ``thresholds`` buffer aligned with the model's built-in scores; the ``detectors`` config
  (absent: those scores). Step 1.
- ddb9546, layout: the threshold rules, callbacks and CSV logger moved module. Step 2.
- e9785d7, objectives: II's class means as a per-class sum and count instead of pytorch-ood's
  running centers (step 3); CAC with Euclidean instead of squared distances, so a CAC
  checkpoint from before scores differently and is refused.
- d6a87fb, natural images: the autoencoder-classifier's ``model.classifier`` became
  ``model.net``; the networks take ``input_shape`` from the data instead of ``image_size`` and
  ``in_channels``; ``data.channels`` and ``data.image_size`` (absent: the dataset's own shape,
  where every image used to be brought to 1x28x28). Step 4.
- 5396d3c, II batch-normalizes its embedding (``embedding_norm``). Step 5.
- issue 32, the objective group: the run config's ``model.objective`` became the top-level
  ``objective`` (set where it is named, ``objective.gamma=2``); the module still receives it
  as ``objective``, so its hyperparameters are unchanged. Step 6.
- issue 33, a calibration split of its own (``data.calibration_size``, absent: the whole
  validation split calibrated, as it did then). Step 7.

Added with a default that is what older code did, so no step: ``objective`` (none:
cross-entropy), ``model.compile``, ``model.test_rotations``/``test_shift``/``test_flip``/
``test_padding``, ``data.translate``/``rotate``/``on_device``/``drop_last``/``cache_dir``/
``fit_limit`` and the natural-image augmentation keys. The conformal rule and the new default
voting sets changed defaults only: a checkpoint keeps the rule and voting set it was calibrated
with.
"""

from collections.abc import Callable
from typing import Any

import torch

from osr import __version__
from osr.utils.errors import CheckpointError

CONFIG_KEY = "osr_config"  # the run's resolved config (osr.callbacks.StoreRunConfig)
VERSION_KEY = "osr_version"
FORMAT_KEY = "osr_format"
THRESHOLDS_KEY = "osr_thresholds"  # as osr.modules.open_set names it

Checkpoint = dict[str, Any]

# the scores of checkpoints from before the detectors config, in their ``thresholds`` order
LEGACY_SCORES = {
    "osr.modules.Classifier": ("msp", "max_logit", "energy"),
    "osr.modules.AutoencoderClassifier": ("recon_l2", "binary_diff", "msp", "max_logit", "energy"),
}
LEGACY_DETECTORS = {
    "msp": "osr.detectors.MSP",
    "max_logit": "osr.detectors.MaxLogit",
    "energy": "osr.detectors.Energy",
    "recon_l2": "osr.detectors.ReconL2",
    "binary_diff": "osr.detectors.BinaryDiff",
}
MOVED_TARGETS = {
    "osr.calibration.MeanStd": "osr.scoring.thresholds.MeanStd",
    "osr.calibration.Quantile": "osr.scoring.thresholds.Quantile",
    "osr.calibration.ThresholdCalibration": "osr.callbacks.ThresholdCalibration",
    "osr.history.EpochHistory": "osr.callbacks.EpochHistory",
    "osr.resume.CarryCSVRows": "osr.callbacks.CarryCSVRows",
    "osr.resume.RNGState": "osr.callbacks.RNGState",
    "osr.csv_logger.ResumableCSVLogger": "osr.utils.csv_logger.ResumableCSVLogger",
}
II, CAC = "osr.objectives.IILoss", "osr.objectives.CACLoss"
OLD_II_MEANS = "objective.criterion.running_centers."
OLD_CAC_ANCHORS = "objective.criterion._centers._params"
II_NORM = "objective.embedding_norm."
BATCH_NORM_EPS = 1e-5  # nn.BatchNorm1d's default, which IILoss uses


def _config(ckpt: Checkpoint) -> dict[str, Any]:
    return ckpt.get(CONFIG_KEY) or {}


def _model(ckpt: Checkpoint) -> dict[str, Any]:
    return _config(ckpt).get("model") or {}


def _objective_target(ckpt: Checkpoint) -> str | None:
    objective = _config(ckpt).get("objective") or _model(ckpt).get("objective") or {}
    return objective.get("_target_")


def thresholds_by_name(ckpt: Checkpoint) -> None:
    """666f23f: the ``thresholds`` buffer (NaN: not calibrated) becomes ``osr_thresholds`` by
    name, and the built-in scores it was aligned with the ``detectors`` config."""
    config = _config(ckpt)
    names = LEGACY_SCORES.get(_model(ckpt).get("_target_"))
    if names is None:
        return
    if "detectors" not in config:
        config["detectors"] = {name: {"_target_": LEGACY_DETECTORS[name]} for name in names}
    legacy = ckpt["state_dict"].pop("thresholds", None)
    if legacy is not None:
        pairs = zip(names, legacy.tolist(), strict=True)
        ckpt[THRESHOLDS_KEY] = {name: value for name, value in pairs if value == value}


def moved_targets(ckpt: Checkpoint) -> None:
    """ddb9546: classes named by the run config that moved module."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("_target_") in MOVED_TARGETS:
                node["_target_"] = MOVED_TARGETS[node["_target_"]]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_config(ckpt))


def objectives_own_state(ckpt: Checkpoint) -> None:
    """e9785d7: II's running centers (its class means) become a sum with a count of one per
    class; CAC's squared distances became Euclidean ones, which no rewrite can undo."""
    state = ckpt["state_dict"]
    target = _objective_target(ckpt)
    if target == CAC and OLD_CAC_ANCHORS in state:
        raise CheckpointError(
            "trained with objective=cac by osr before 2026-11-29 (commit e9785d7), whose CAC "
            "used squared distances; today's uses the paper's Euclidean "
            "ones, so its logits and scores would not be those it was calibrated on. Retrain "
            "it, or evaluate it with osr at that commit."
        )
    if target == II and OLD_II_MEANS + "running_centers" in state:
        means = state.pop(OLD_II_MEANS + "running_centers")
        state.pop(OLD_II_MEANS + "num_batches_tracked", None)
        state["objective.sums"] = means
        state["objective.counts"] = torch.ones(len(means))


def natural_images(ckpt: Checkpoint) -> None:
    """d6a87fb: the autoencoder-classifier's ``classifier`` is ``net``; networks take
    ``input_shape`` (what every image was brought to: 1x28x28) instead of ``image_size`` and
    ``in_channels``; the data's shape is explicit, as ``channels``/``image_size`` now default to
    each dataset's own."""
    hparams = ckpt.get("hyper_parameters") or {}
    for model in (_model(ckpt), hparams):
        if "classifier" in model and "net" not in model:
            model["net"] = model.pop("classifier")
        for network in (model.get("net"), model.get("autoencoder")):
            for key in ("image_size", "in_channels"):
                (network or {}).pop(key, None)
    if "hyper_parameters" in ckpt and "input_shape" not in hparams:
        hparams["input_shape"] = (1, 28, 28)
    for data in (_config(ckpt).get("data"), ckpt.get("datamodule_hyper_parameters")):
        if data is not None and "channels" not in data:
            data.update(channels=1, image_size=28)


def ii_embedding_norm(ckpt: Checkpoint) -> None:
    """5396d3c: II batch-normalizes the head's output before measuring distances; a model
    trained without it gets a normalization that changes nothing (mean 0, variance 1 - eps)."""
    state = ckpt["state_dict"]
    if _objective_target(ckpt) != II or II_NORM + "running_mean" in state:
        return
    k = len(state["objective.counts"])
    state[II_NORM + "running_mean"] = torch.zeros(k)
    state[II_NORM + "running_var"] = torch.full((k,), 1 - BATCH_NORM_EPS)
    state[II_NORM + "num_batches_tracked"] = torch.tensor(0)


def objective_at_top_level(ckpt: Checkpoint) -> None:
    """Issue 32: the objective's config moves from ``model.objective`` to ``objective``."""
    model = _model(ckpt)
    if "objective" in model:
        _config(ckpt)["objective"] = model.pop("objective")


def calibration_split(ckpt: Checkpoint) -> None:
    """Issue 33: thresholds are fitted on a calibration split of their own (by default half of
    ``data.val_size``); a run from before was calibrated on the whole validation split, which
    ``data.calibration_size=0`` keeps, so that it evaluates and recalibrates as it did."""
    for data in (_config(ckpt).get("data"), ckpt.get("datamodule_hyper_parameters")):
        if data is not None and "calibration_size" not in data:
            data["calibration_size"] = 0


# STEPS[i] rewrites format i into format i + 1
STEPS: tuple[Callable[[Checkpoint], None], ...] = (
    thresholds_by_name,
    moved_targets,
    objectives_own_state,
    natural_images,
    ii_embedding_norm,
    objective_at_top_level,
    calibration_split,
)
FORMAT = len(STEPS)  # the format this osr writes


def migrate(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` rewritten in place into today's format (its ``osr_version`` kept)."""
    written = ckpt.get(FORMAT_KEY, 0)
    if written > FORMAT:
        raise CheckpointError(
            f"written by osr {ckpt.get(VERSION_KEY, '?')} in checkpoint format {written}; "
            f"this osr ({__version__}) reads formats up to {FORMAT}: update osr to read it."
        )
    for step in STEPS[written:]:
        step(ckpt)
    ckpt[FORMAT_KEY] = FORMAT
    return ckpt


def stamp(ckpt: Checkpoint) -> None:
    """Record that this osr wrote ``ckpt``, in today's format."""
    ckpt[VERSION_KEY] = __version__
    ckpt[FORMAT_KEY] = FORMAT
