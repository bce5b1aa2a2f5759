"""Training objectives: each lowers its loss, each score tells constructed unknowns from the
known classes, ARPL against a hand computation, cross-entropy exactly as before (old
checkpoints included), the detectors each objective allows, and real runs whose checkpoints
rebuild the objective for osr.evaluate, osr.calibrate and osr.predict."""

import csv
import functools
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch import Tensor, nn

from osr.calibrate import calibrate_checkpoint
from osr.data import MNISTDataModule
from osr.evaluate import evaluate_checkpoint
from osr.modules import AutoencoderClassifier, Classifier
from osr.objectives import (
    ARPL,
    CrossEntropy,
    IILoss,
    LabelSmoothing,
    Objective,
    build_objective,
)
from osr.predict import predict
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from osr.utils.config import CONFIG_DIR, instantiate_module
from osr.utils.errors import OSRError
from tests.conftest import TINY_TRAINING
from tests.test_models import CLASSES, OPTIMIZER, make_module

FIXTURES = Path(__file__).parent / "fixtures"
OBJECTIVES = sorted(p.stem for p in (Path(CONFIG_DIR) / "objective").glob("*.yaml"))
# the shipped objectives' own scores (docs/usage.md); a user's objective may bring any
SHIPPED = {"ce": None, "label_smoothing": None, "logitnorm": None}
SHIPPED |= {"center": "center", "cac": "cac", "ii": "ii", "arpl": "arpl"}
CROSS_ENTROPY = {"_target_": "osr.objectives.CrossEntropy"}
HEAD_DETECTORS = {"vim", "react", "dice", "ash", "fdbd"}  # read head(features) as the logits
DIM = 8  # features of the constructed examples
CENTERS = 3 * torch.eye(2, DIM)  # two known classes, 3 from the origin on axes 0 and 1


@functools.cache
def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def objective(name: str, classes: int = 2) -> Objective:
    """The objective of conf/objective/<name>.yaml, for two classes and DIM features."""
    return build_objective(compose_train(f"objective={name}").objective, classes, DIM)


def clusters(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n feature vectors per class, tight around CENTERS, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2 * n) % 2
    return CENTERS[labels] + 0.1 * torch.randn(2 * n, DIM, generator=g), labels


def fit(obj: Objective, epochs: int, steps: int, lr: float) -> tuple[nn.Linear, list[float]]:
    """Adam on a linear head and the objective's parameters, features fed in directly (one
    fixed batch), ``start_epoch`` at each epoch as the module calls it. Returns the head and
    the loss of every step."""
    torch.manual_seed(0)
    head = nn.Linear(DIM, 2)
    features, labels = clusters(20, seed=0)
    trained = [p for p in (*head.parameters(), *obj.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=lr)
    losses = []
    obj.train()
    for _ in range(epochs):
        obj.start_epoch()
        for _ in range(steps):
            logits = obj.logits(features, head)
            read = features if obj.needs_features else None
            loss, terms = obj.loss(read, logits, labels, head)
            assert tuple(terms) == obj.terms
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    obj.eval()
    return head, losses


def test_every_objective_of_the_group_builds():
    """Whatever conf/objective/ holds, a user's additions included (this test named the seven
    shipped ones and failed on an eighth): each builds an Objective; the shipped ones are all
    there, with their own scores."""
    assert set(SHIPPED) <= set(OBJECTIVES)
    for name in OBJECTIVES:
        built = objective(name)
        assert isinstance(built, Objective), name
        if name in SHIPPED:
            assert built.score_name == SHIPPED[name], name
    assert compose_train().objective == CROSS_ENTROPY


@pytest.mark.parametrize("name", OBJECTIVES)
def test_a_few_steps_lower_the_loss(name):
    _, losses = fit(objective(name), epochs=1, steps=10, lr=0.01)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


# (epochs, steps per epoch, learning rate): center's centers start N(0, 1) far from the
# clusters; II's class means restart every epoch and its embedding's running statistics
# follow the training batches, so a short run at a small rate keeps them close
SHORT_TRAINING = {"center": (3, 40, 0.1), "cac": (3, 20, 0.05), "ii": (3, 10, 0.01)}


@pytest.mark.parametrize("name", sorted(name for name, score in SHIPPED.items() if score))
def test_own_score_ranks_points_between_the_classes_above_the_known_ones(name):
    obj = objective(name)
    head, _ = fit(obj, *SHORT_TRAINING.get(name, (3, 20, 0.05)))
    obj.eval()  # scored as the module scores: II's embedding by its running statistics
    known, _ = clusters(20, seed=1)
    g = torch.Generator().manual_seed(2)
    between = CENTERS.mean(0) + 0.1 * torch.randn(20, DIM, generator=g)
    with torch.no_grad():
        scores = {k: obj.score(v, obj.logits(v, head)) for k, v in [("k", known), ("u", between)]}
        accuracy = (obj.logits(known, head).argmax(1) == torch.arange(40) % 2).float().mean()
    assert accuracy == 1
    assert scores["k"].shape == (40,) and scores["u"].shape == (20,)
    assert scores["k"].max() < scores["u"].min()  # AUROC 1


def test_arpl_logits_loss_and_score_by_hand():
    arpl = ARPL(num_classes=2, feature_dim=2)  # weight 0.1, temperature 1, margin 1
    with torch.no_grad():
        arpl.points.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # P_0, P_1
        arpl.radius.fill_(2.0)
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 4.0]])
    y = torch.tensor([0, 1, 1])
    # d_e(x, P_k) = mean over the 2 dims of (x - P_k)^2, d_d = x . P_k, logit_k = d_e - d_d
    #   x=(2,0): d_e = (1+0)/2, (4+1)/2 = 0.5, 2.5   d_d = 2, 0   logits -1.5, 2.5
    #   x=(1,1): d_e = (0+1)/2, (1+0)/2 = 0.5, 0.5   d_d = 1, 1   logits -0.5, -0.5
    #   x=(0,4): d_e = (1+16)/2, (0+9)/2 = 8.5, 4.5  d_d = 0, 4   logits 8.5, 0.5
    logits = arpl.logits(x, head=None)
    assert torch.allclose(logits, torch.tensor([[-1.5, 2.5], [-0.5, -0.5], [8.5, 0.5]]))
    # cross-entropy: -log softmax at the label: log(1 + e^4), log 2, log(1 + e^8)
    ce = (math.log(1 + math.exp(4)) + math.log(2) + math.log(1 + math.exp(8))) / 3
    assert ce == pytest.approx(4.2372108)
    # open space, R = 2, margin 1: max(d_e(x, P_y) - 2 + 1, 0) for d_e(x, P_y) = 0.5, 0.5, 4.5
    open_space = (0 + 0 + 3.5) / 3
    loss, terms = arpl.loss(x, logits, y, head=None)
    assert terms["ce"].item() == pytest.approx(ce)
    assert terms["open_space"].item() == pytest.approx(open_space)
    assert loss.item() == pytest.approx(ce + 0.1 * open_space) == pytest.approx(4.3538775)
    loss.backward()
    assert arpl.radius.grad.item() == pytest.approx(-0.1 / 3)  # only x=(0,4) is outside R - 1
    assert arpl.score(x, logits).tolist() == [-2.5, 0.5, -8.5]  # minus the largest logit
    arpl.temperature = 2.0
    halved = arpl.loss(x, logits, y, head=None)[1]["ce"]
    assert halved.item() == pytest.approx(F.cross_entropy(logits / 2, y).item())


def test_cac_loss_and_score_are_the_papers():
    """Miller et al.'s equations by hand, with Euclidean distances to the anchors (the paper
    and the authors' code): on squared distances the loss and the score differ."""
    cac = objective("cac", classes=3)  # magnitude 10, alpha 0.1
    assert torch.equal(cac.anchors, 10 * torch.eye(3))
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))  # the head's outputs are the features
    z = torch.tensor([[9.0, 1.0, 0.0], [0.0, 6.0, 8.0], [3.0, 4.0, 0.0], [10.0, 0.0, 10.0]])
    labels = torch.tensor([0, 2, 1, 0])
    anchors = 10 * np.eye(3)
    d = np.linalg.norm(z.numpy()[:, None, :] - anchors[None], axis=2)  # Euclidean, 4 x 3
    d_y = d[np.arange(4), labels.numpy()]
    others = [np.delete(d[i], labels[i]) for i in range(4)]
    anchor = d_y.mean()  # the anchor loss
    tuplet = np.mean([np.log(1 + np.exp(d_y[i] - others[i]).sum()) for i in range(4)])
    logits = cac.logits(z, head)
    assert np.allclose(-logits.detach().numpy(), d, atol=1e-5)
    loss, terms = cac.loss(z, logits, labels, head)
    assert terms["anchor"].item() == pytest.approx(anchor, rel=1e-6)
    assert terms["tuplet"].item() == pytest.approx(tuplet, rel=1e-6)
    assert loss.item() == pytest.approx(0.1 * anchor + tuplet, rel=1e-6)
    # the rejection score: min over classes of d * (1 - softmin(d)); osr keeps its log
    softmin = np.exp(-d) / np.exp(-d).sum(1, keepdims=True)
    rejection = (d * (1 - softmin)).min(1)
    score = cac.score(z, logits).detach().double().numpy()
    assert np.allclose(np.exp(score), rejection, rtol=1e-5)
    # (10, 0, 10) lies 10 from anchors 0 and 2 and sqrt(300) from anchor 1
    tie = 10 * (1 - math.exp(-10) / (2 * math.exp(-10) + math.exp(-math.sqrt(300))))
    assert rejection[3] == pytest.approx(tie, rel=1e-12)
    # where float32 rounds 1 - softmin to 0, the log of the score still orders the points
    near = -torch.tensor([[1.0, 300.0], [4.0, 300.0]])
    assert cac.score(None, near)[0] < cac.score(None, near)[1] < 0


def batch_normalized(z: np.ndarray) -> np.ndarray:
    """A training batch's embedding as II normalizes it: by its own mean and (biased)
    variance, eps 1e-5, no scale or shift."""
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)


def test_ii_class_means_are_counted_per_class():
    """Batches that miss a class: each class's mean is the mean of its own images (numpy),
    not shrunk toward zero by batches it was absent from (pytorch-ood 0.4.0's running
    centers: class 2's mean would be half its value after batches {0, 1}, {0, 1, 2})."""
    ii = objective("ii", classes=3)
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, generator=g) + 5, torch.tensor([0, 1, 0, 1])),
        (torch.randn(6, 3, generator=g) + 5, torch.tensor([0, 1, 2, 2, 1, 0])),
        (torch.randn(3, 3, generator=g) + 5, torch.tensor([2, 2, 0])),
    ]
    seen_z, seen_y = [], []
    ii.train()
    for z, y in batches:
        ii.loss(z, ii.logits(z, head), y, head)
        seen_z.append(batch_normalized(z.numpy().astype(np.float64)))
        seen_y.append(y.numpy())
        all_z, all_y = np.concatenate(seen_z), np.concatenate(seen_y)
        for c in range(3):
            expected = all_z[all_y == c].mean(0) if (all_y == c).any() else np.zeros(3)
            assert np.allclose(ii.means[c].numpy(), expected, atol=1e-5), (len(seen_z), c)
    # the running statistics moved once per training step (momentum 0.1), not twice
    running = np.zeros(3)
    for z, _ in batches:
        running = 0.9 * running + 0.1 * z.numpy().mean(0)
    assert np.allclose(ii.embedding_norm.running_mean.numpy(), running, atol=1e-5)
    # a training batch of one image has no batch statistics: the running ones normalize it
    one = batches[2][0][:1]
    norm = ii.embedding_norm
    by_running = (one - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    assert torch.allclose(ii.embed(one, head), by_running, atol=1e-5)
    ii.eval()
    frozen = ii.means.clone()
    ii.loss(batches[0][0], ii.logits(batches[0][0], head), batches[0][1], head)
    assert torch.equal(ii.means, frozen)  # only training batches count
    # the loss of the paper on the first batch, normalized: spread around its class means
    # minus the squared distance between them
    ii.train()
    z, y = batches[0]
    zn = torch.as_tensor(batch_normalized(z.numpy().astype(np.float64)))
    mu = torch.stack([zn[y == c].mean(0) for c in (0, 1)])
    spread = sum(((zn[y == c] - mu[c]) ** 2).sum() for c in (0, 1)) / 4
    expected = spread - ((mu[0] - mu[1]) ** 2).sum()
    assert ii.loss(z, None, y, head)[0].item() == pytest.approx(expected.item(), rel=1e-5)


# --- the modules ---------------------------------------------------------------------------------
def test_cross_entropy_is_the_loss_of_before_and_adds_no_state():
    torch.manual_seed(0)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    ce = {"_target_": "osr.objectives.CrossEntropy"}
    for kind in ("baseline", "mlae"):
        before = make_module(kind).train()  # objective=None: what old configs build
        assert isinstance(before.objective, CrossEntropy)
        if kind == "baseline":
            module = Classifier(
                {"_target_": "osr.models.ConvNet"}, OPTIMIZER, CLASSES, objective=ce
            )
        else:
            nets = [{"_target_": "osr.models.Autoencoder"}, {"_target_": "osr.models.ConvNet"}]
            module = AutoencoderClassifier(*nets, OPTIMIZER, CLASSES, objective=ce)
        assert list(module.state_dict()) == list(before.state_dict())
        assert not any(k.startswith("objective") for k in module.state_dict())
        module.load_state_dict(before.state_dict())
        torch.manual_seed(1)  # the same dropout masks
        loss, logits, terms = module.train()._loss(x, y)
        torch.manual_seed(1)
        if kind == "baseline":
            expected = F.cross_entropy(before.net(x), y)
            assert terms == {}
        else:
            recon, classified = before.autoencoder(x), before.classifier(x)
            expected = 1.0 * F.mse_loss(recon, x) + 1.0 * F.cross_entropy(classified, y)
            assert list(terms) == ["rec_mse"]
        assert torch.equal(loss, expected)


def test_a_checkpoint_from_before_objectives_loads_with_cross_entropy():
    module = module_from_checkpoint(read_checkpoint(FIXTURES / "pre_detectors_baseline.pt"))
    assert isinstance(module.objective, CrossEntropy)
    assert module.score_names == ("msp", "max_logit", "energy")


def build_module(*overrides: str, classes: int = 10):
    return instantiate_module(compose_train(*overrides), class_names=CLASSES[:classes])


@pytest.mark.parametrize("name", OBJECTIVES)
def test_detectors_follow_the_objective(name, caplog):
    with caplog.at_level(logging.INFO, logger="osr.detectors.registry"):
        module = build_module("model=baseline", f"objective={name}", "detectors=all")
    obj = module.objective
    configured = list(compose_train("detectors=all").detectors)
    head_bound = [] if obj.uses_head_as_logits else sorted(HEAD_DETECTORS)
    skipped = {"recon_l2", "binary_diff", *head_bound}  # the baseline has no reconstruction
    own = [obj.score_name] if obj.score_name else []
    assert list(module.detectors) == own + [n for n in configured if n not in skipped]
    for skipped in head_bound:
        assert f"detector {skipped} skipped: the model does not provide ['head']" in caplog.text
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = module.eval().model_outputs(x)
        assert outputs.provided == module.provides
        assert ("head" in module.provides) == obj.uses_head_as_logits
        assert torch.equal(outputs.logits, module(x))
        assert torch.equal(outputs.classify(x), outputs.logits)  # what ODIN differentiates
        if obj.score_name:
            own_score = module.detectors[obj.score_name].score(outputs)
            assert torch.equal(own_score, obj.score(outputs.features, outputs.logits))
        for detector in module.detectors.values():  # odin differentiates classify
            if not detector.requires_fit:
                scores = detector.score(outputs)
                assert scores.shape == (5,) and torch.isfinite(scores).all(), detector.name


def test_objective_terms_are_logged_and_its_parameters_trained():
    module = build_module("model=mlae", "objective=center")
    assert module.loss_terms == ("rec_mse", "ce", "center")
    assert module.train_sums.names == ("loss", "rec_mse", "ce", "center")
    optimizer = module.build_optimizer()
    centers = module.objective.centers
    assert any(p is centers for group in optimizer.param_groups for p in group["params"])
    before = centers.detach().clone()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    module.training_step((x, y), 0).backward()
    optimizer.step()
    assert not torch.equal(centers, before)


@pytest.mark.parametrize("kind", ["baseline", "mlae"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_trainable_parameter_gets_a_gradient(name, kind):
    """What DDP requires of every step (it refuses trainable parameters left without a
    gradient): a head that the objective does not read is frozen."""
    module = build_module(f"model={kind}", f"objective={name}").train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    module.training_step((x, y), 0).backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    head = module.classifier_net.head
    assert head.weight.requires_grad == module.objective.uses_head


def test_ii_running_means_are_state_and_restart_every_epoch():
    module = build_module("model=baseline", "objective=ii")
    assert isinstance(module.objective, IILoss)
    keys = [k for k in module.state_dict() if k.startswith("objective.")]
    norm = ("running_mean", "running_var", "num_batches_tracked")
    assert keys == ["objective.sums", "objective.counts"] + [
        f"objective.embedding_norm.{k}" for k in norm
    ]
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    module.train()
    module.training_step((x, y), 0).backward()
    means = module.objective.means
    assert means.abs().sum() > 0 and not means.requires_grad  # no graph kept in the buffer
    assert module.objective.counts.tolist() == [1.0] * 8 + [0.0] * 2
    module.on_train_epoch_start()
    assert torch.equal(module.objective.means, torch.zeros(10, 10))


def test_an_experiment_file_overrides_the_objective(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "reciprocal.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /model: baseline\n  - override /objective: arpl\n"
        "objective:\n  weight: 0.2\n"
    )
    cfg = compose_train(f"hydra.searchpath=[file://{tmp_path}]", "experiment=reciprocal")
    assert cfg.model._target_ == "osr.modules.Classifier"
    assert cfg.objective == {
        "_target_": "osr.objectives.ARPL",
        "weight": 0.2,
        "temperature": 1.0,
        "margin": 1.0,
    }


def test_an_objective_file_as_the_readme_describes_trains_with_it(tmp_path):
    """conf/objective/<name>.yaml with its _target_ and no `# @package` line: before issue 32
    it landed at the top level, unread, and the module trained cross-entropy (CrossEntropy,
    not LabelSmoothing)."""
    (tmp_path / "objective").mkdir()
    (tmp_path / "objective" / "smooth.yaml").write_text(
        "_target_: osr.objectives.LabelSmoothing\nsmoothing: 0.2\n"
    )
    module = build_module(f"hydra.searchpath=[file://{tmp_path}]", "objective=smooth")
    assert isinstance(module.objective, LabelSmoothing)
    assert module.objective.smoothing == 0.2


def test_an_objective_parameter_is_set_where_the_group_is_named():
    """``objective=<name> objective.<key>=<value>``, as calibration.alpha: before issue 32,
    "Key 'objective' is not in struct" (model.objective.smoothing was the working form)."""
    module = build_module("objective=label_smoothing", "objective.smoothing=0.3")
    assert isinstance(module.objective, LabelSmoothing)
    assert module.objective.smoothing == 0.3
    assert compose_train("objective=arpl", "objective.weight=0.5").objective.weight == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective._target_=osr.objectives.Nope"], r"could not build osr.objectives.Nope"),
        (["objective._target_=torch.nn.Identity"], r"is not an osr.objectives.Objective"),
        (
            ["objective=arpl", "+detectors.arpl._target_=osr.detectors.MSP"],
            r"detectors.arpl: arpl is the score of the objective \(ARPL\)",
        ),
    ],
)
def test_a_bad_objective_config_is_named(overrides, message):
    with pytest.raises(InstantiationException) as raised:  # osr.train prints the OSRError
        build_module("model=baseline", *overrides)
    assert isinstance(raised.value.__cause__, OSRError)
    assert re.search(message, str(raised.value.__cause__))


# --- real runs -------------------------------------------------------------------------------
def detectors_in(metrics: dict, ood_set: str = "cifar10") -> set[str]:
    prefix = f"ood.{ood_set}.scores."
    return {k[len(prefix) :].split(".")[0] for k in metrics if k.startswith(prefix)}


def write_digits(folder: Path, tiny_data: Path) -> Tensor:
    folder.mkdir()
    datamodule = MNISTDataModule(str(tiny_data), 0.13, 0.31, val_size=100, download=False)
    datamodule.setup()
    digits = datamodule.test_set.tensors[0][:4]
    for i, digit in enumerate(digits):
        torchvision.io.write_png(digit, str(folder / f"digit{i}.png"))
    return datamodule.transform(digits)


@pytest.mark.slow
def test_arpl_run_and_its_checkpoint_in_evaluate_calibrate_and_predict(
    train_cfg, evaluate_cfg, tmp_path, tiny_data
):
    metrics, objects = train(train_cfg("model=baseline", "objective=arpl", *TINY_TRAINING))
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    found = detectors_in(saved)
    assert "arpl" in found and not found & HEAD_DETECTORS
    assert "ood.cifar10.scores.arpl.auroc" in saved and "thresholds.arpl" in saved
    for key in ("train/ce", "train/open_space", "val/ce", "val/open_space"):
        assert math.isfinite(metrics[key]), key
    best = run / "checkpoints" / "best.ckpt"
    ckpt = read_checkpoint(best)
    trained = objects["model"]
    assert torch.equal(ckpt["state_dict"]["objective.points"], trained.objective.points.detach())
    assert "arpl" in ckpt["osr_thresholds"]
    assert not trained.net.head.weight.requires_grad  # ARPL does not read the head
    report = (run / "report.md").read_text()
    assert "- **objective**: ARPL (weight=0.1, temperature=1.0, margin=1.0)" in report

    # evaluate: the module rebuilt from the checkpoint's config gives the same figures
    again = evaluate_checkpoint(evaluate_cfg(best))
    for key, value in saved.items():
        assert again[key] == (value if isinstance(value, list) else pytest.approx(value)), key

    # calibrate with another detector set: the objective's detector is still there, and its
    # threshold is the one fitted after training
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "calibrate",
            overrides=[
                f"ckpt_path={best}",
                f"paths.data_dir={tiny_data}",
                f"paths.output_dir={tmp_path / 'cal'}",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                "detectors=default",
            ],
        )
    calibrated = read_checkpoint(calibrate_checkpoint(cfg))
    assert calibrated["osr_thresholds"]["arpl"] == pytest.approx(ckpt["osr_thresholds"]["arpl"])
    assert list(calibrated["osr_thresholds"])[0] == "arpl"

    # predict: the arpl column is the trained module's score of each image
    x = write_digits(tmp_path / "digits", tiny_data)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"ckpt_path={best}",
                f"inputs={tmp_path / 'digits'}",
                f"paths.output_dir={tmp_path / 'pred'}",
                "device=cpu",
            ],
        )
    with predict(cfg).open() as f:
        column = [float(row["arpl"]) for row in csv.DictReader(f)]
    with torch.no_grad():
        expected = trained.eval().scores(x)["arpl"]
    assert column == pytest.approx(expected.tolist(), rel=1e-5)


@pytest.mark.slow
def test_cac_on_the_autoencoder_classifier_runs_and_reloads(train_cfg, tmp_path):
    metrics, objects = train(
        train_cfg("model=mlae", "objective=cac", "evaluate=false", *TINY_TRAINING)
    )
    trained = objects["model"]
    assert list(trained.detectors)[0] == "cac"
    assert not set(trained.detectors) & HEAD_DETECTORS
    for key in ("train/rec_mse", "train/anchor", "train/tuplet", "val/anchor", "val/tuplet"):
        assert math.isfinite(metrics[key]), key
    module = module_from_checkpoint(read_checkpoint(tmp_path / "run/checkpoints/best.ckpt"))
    assert module.is_calibrated and module.threshold_dict() == trained.threshold_dict()
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = trained.eval().scores(x), module.eval().scores(x)
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
