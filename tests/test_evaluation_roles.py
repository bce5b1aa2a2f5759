"""Evaluation sets by role: the known test split is never replaced by an OOD set of the same
dataset or name; each known dataset trains with OOD sets of other datasets; osr.evaluate
scores the OOD sets a checkpoint was trained with."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from osr.data import FashionMNISTDataModule, MNISTDataModule
from osr.evaluate import evaluate_checkpoint
from osr.scoring.test_sets import evaluation_loaders
from osr.train import train
from osr.utils.errors import OSRError
from tests.conftest import TINY_TEST, TINY_TRAINING

# each known dataset's default OOD sets (ood=for/<data>)
OOD_SETS_OF = {
    "mnist": ("fashion_mnist", "cifar10"),
    "fashion_mnist": ("mnist", "cifar10"),
    "cifar10": ("mnist", "fashion_mnist"),  # natural images: the gray far-OOD sets
}
TEST_SIZE = {"mnist": TINY_TEST, "fashion_mnist": TINY_TEST, "cifar10": 60}
LOGGER = "osr.scoring.test_sets"


def ood_sets(metrics: dict) -> set[str]:
    return {key.split(".")[1] for key in metrics if key.startswith("ood.")}


def labels_of(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).unique().tolist()


@pytest.mark.parametrize("known", OOD_SETS_OF)
def test_each_known_dataset_is_evaluated_against_other_datasets(train_cfg, known):
    cfg = train_cfg(f"data={known}", ood_sets=OOD_SETS_OF[known])
    assert tuple(cfg.ood.sets) == OOD_SETS_OF[known]


def test_an_ood_copy_of_the_known_dataset_is_left_out(tiny_data, caplog):
    known = MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=100, download=False)
    copy = MNISTDataModule(str(tiny_data), 0.13, 0.31, unknown_label=10, download=False)
    clothes = FashionMNISTDataModule(str(tiny_data), 0.286, 0.353, unknown_label=10, download=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sets = evaluation_loaders(known, {"mnist": copy, "fashion_mnist": clothes})
    assert "OOD set mnist is MNIST, the known dataset: left out" in caplog.text
    assert sets.known[0] is known and list(sets.ood) == ["fashion_mnist"]
    assert list(sets.by_name()) == ["mnist", "fashion_mnist"]
    assert labels_of(sets.known[1]) == list(range(10))  # its own labels, none UNKNOWN
    assert labels_of(sets.ood["fashion_mnist"][1]) == [10]


def test_ood_sets_never_take_the_names_of_the_known_sets(tiny_data, caplog):
    known = MNISTDataModule(
        str(tiny_data), 0.13, 0.31, val_size=100, known_classes=[0, 1, 2, 3, 4, 5], download=False
    )

    def clothes() -> FashionMNISTDataModule:
        return FashionMNISTDataModule(str(tiny_data), 0.286, 0.353, unknown_label=6, download=False)

    for name in ("mnist", "mnist_unknown"):
        with pytest.raises(OSRError, match=f"ood.sets.{name} \\(FashionMNIST\\) is named like"):
            evaluation_loaders(known, {name: clothes()})
    copy = MNISTDataModule(str(tiny_data), 0.13, 0.31, unknown_label=6, download=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sets = evaluation_loaders(known, {"digits": copy, "clothes": clothes()})
    assert "OOD set digits is MNIST, the known dataset: left out" in caplog.text
    assert list(sets.by_name()) == ["mnist", "mnist_unknown", "clothes"]
    assert labels_of(sets.known[1]) == list(range(6))
    assert labels_of(sets.held_out["mnist_unknown"][1]) == [6]


@pytest.mark.slow
@pytest.mark.parametrize("known", ["cifar10", "fashion_mnist"])
def test_closed_set_accuracy_is_measured_on_the_known_test_split(train_cfg, tmp_path, known):
    train(train_cfg(f"data={known}", "model=baseline", *TINY_TRAINING, ood_sets=OOD_SETS_OF[known]))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    scores = np.load(run / "scores.npz")
    labels = scores[f"{known}.labels"]
    assert metrics[f"{known}.count"] == len(labels) == TEST_SIZE[known]
    assert sorted(set(labels.tolist())) == list(range(10))  # its classes, none UNKNOWN (10)
    correct = scores[f"{known}.logits"].argmax(1) == labels
    assert metrics["closed_set.accuracy"] == pytest.approx(correct.mean())
    assert ood_sets(metrics) == set(OOD_SETS_OF[known])


@pytest.mark.slow
def test_evaluate_scores_the_ood_sets_the_checkpoint_was_trained_with(
    train_cfg, evaluate_cfg, tiny_data, tmp_path, caplog
):
    # trained on a copy of the data, gone by evaluation: every set is read from evaluate's
    # paths.data_dir, not the directory the checkpoint recorded
    moved = tmp_path / "moved"
    shutil.copytree(tiny_data, moved)
    sets = OOD_SETS_OF["fashion_mnist"]
    cfg = train_cfg(
        "data=fashion_mnist",
        "model=baseline",
        f"paths.data_dir={moved}",
        *TINY_TRAINING,
        ood_sets=sets,
    )
    train(cfg)
    shutil.rmtree(moved)
    at_train = json.loads((tmp_path / "run" / "metrics.json").read_text())
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"

    again = evaluate_checkpoint(evaluate_cfg(best))
    assert ood_sets(again) == set(sets)
    assert again["fashion_mnist.count"] == TINY_TEST
    for key in ("closed_set.accuracy", "open_set.accuracy", "ood.cifar10.scores.msp.auroc"):
        assert again[key] == pytest.approx(at_train[key], abs=1e-6), key

    # ood=<name> still replaces them (gray: MNIST and FashionMNIST, the latter the known set)
    gray_cfg = evaluate_cfg(best, "ood=gray", "ood.limit=20")
    gray_cfg.paths.output_dir = str(tmp_path / "gray")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gray = evaluate_checkpoint(gray_cfg)
    assert "OOD set fashion_mnist is FashionMNIST, the known dataset" in caplog.text
    assert ood_sets(gray) == {"mnist"} and gray["ood.mnist.count"] == 20
    assert gray["fashion_mnist.count"] == TINY_TEST
