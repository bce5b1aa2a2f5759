"""Detectors: the contract every configured detector keeps on both models, agreement with
pytorch-ood and osr.detectors.scores, fitted state through a checkpoint, and a detector
registered by config alone."""

import copy
import dataclasses
import functools
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from pytorch_ood.detector import EnergyBased, MaxSoftmax
from pytorch_ood.detector import MaxLogit as OODMaxLogit
from torch import Tensor

from osr.detectors import (
    Detector,
    ModelOutputs,
    build_detectors,
    check_names,
    fit_detectors,
    fit_needs,
    fitted_states,
    load_fitted_states,
    score_detectors,
)
from osr.models import ConvNet
from osr.modules import AutoencoderClassifier, Classifier
from osr.utils.config import CONFIG_DIR
from osr.utils.errors import OSRError
from tests.conftest import digit_like

# pytorch-ood's OpenMax fits Weibull tails by a numeric search that overflows on the way
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in power:RuntimeWarning")

CLASSES = [str(i) for i in range(10)]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
OURS = ("msp", "max_logit", "energy", "recon_l2", "binary_diff")


def detectors_override(option: str) -> str:
    """``detectors=<option>``, appended with ``+`` while conf/train.yaml lists no default."""
    defaults = yaml.safe_load((Path(CONFIG_DIR) / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(entry, dict) and "detectors" in entry for entry in defaults)
    return f"{'' if listed else '+'}detectors={option}"


@functools.cache
def compose_train(*overrides: str) -> DictConfig:
    """The train config with detectors=all (cached: callers do not modify it)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[detectors_override("all"), *overrides])


ALL = list(compose_train().detectors)
UNFITTED_ON_LOGITS = [
    name
    for name, detector in build_detectors(compose_train().detectors).items()
    if detector.needs == {"logits"} and not detector.requires_fit
]


def digits(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Normalized digit-like images (a bar whose row encodes the label) and their labels."""
    labels = np.arange(n) % 10
    images = torch.from_numpy(digit_like(labels, np.random.default_rng(seed))).float()
    return ((images / 255 - 0.13) / 0.31).unsqueeze(1), torch.from_numpy(labels)


@functools.cache
def trained(kind: str) -> Classifier | AutoencoderClassifier:
    """The real module from the composed config, after 30 Adam steps on digit-like images."""
    torch.manual_seed(0)
    # without a detectors config the module holds the built-in detectors: it votes with one
    module = instantiate(
        compose_train(f"model={kind}").model, class_names=CLASSES, voting_scores=["max_logit"]
    )
    x, y = digits(200, seed=0)
    optimizer = module.build_optimizer()
    for _ in range(30):
        optimizer.zero_grad()
        module._loss(x, y)[0].backward()
        optimizer.step()
    return module.eval()


@functools.cache
def split_outputs(kind: str, device: str) -> tuple[ModelOutputs, ModelOutputs]:
    """(training split with labels, test batch of digits and noise) from the module."""
    module = trained(kind) if device == "cpu" else copy.deepcopy(trained(kind)).to(device)
    x_train, y_train = digits(300, seed=1)
    x_digits, _ = digits(12, seed=2)
    x_test = torch.cat(
        [x_digits, torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(3))]
    )
    with torch.no_grad():
        train = module.model_outputs(x_train.to(device))
        test = module.model_outputs(x_test.to(device))
    return dataclasses.replace(train, labels=y_train.to(device)), test


def build(name: str, *overrides: str) -> Detector:
    return build_detectors(compose_train(*overrides).detectors)[name]


def through_checkpoint(state: dict[str, Tensor]) -> dict[str, Tensor]:
    buffer = io.BytesIO()
    torch.save({"detectors": {"x": state}}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["detectors"]["x"]


# --- the contract, over every detector of detectors=all, on both models ------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["baseline", "mlae"])
@pytest.mark.parametrize("name", ALL)
def test_detector_contract(name, kind, device):
    module = trained(kind)
    detector = build(name)
    train, test = split_outputs(kind, device)
    if not detector.needs <= module.provides:
        assert name not in build_detectors(compose_train().detectors, module.provides)
        with pytest.raises(OSRError, match="needs the model's recon.*model=mlae"):
            detector.score(test)
        return
    if detector.requires_fit:
        with pytest.raises(OSRError, match=f"'{name}' is not fitted"):
            detector.score(test)
    detector.fit(train)
    with torch.no_grad():
        scores = detector.score(test)
    assert scores.shape == (len(test),)
    assert scores.dtype.is_floating_point and torch.isfinite(scores).all()
    assert scores.device == test.logits.device
    assert scores.std() > 0  # one score per image, not one per batch
    with torch.no_grad():  # each image's own score, whatever else is in the batch
        sub = detector.score(test.subset(slice(3, 9)))
        # equal up to float32 rounding, which multithreaded matmuls vary with the batch size
        assert torch.allclose(sub, scores[3:9], rtol=0, atol=1e-6 * scores.abs().max().item())

    state = detector.fitted_state()
    assert bool(state) == detector.requires_fit
    assert all(isinstance(v, Tensor) for v in state.values())
    reloaded = build(name)
    reloaded.load_fitted_state(through_checkpoint(state))
    with torch.no_grad():
        assert torch.equal(reloaded.score(test), scores)


@pytest.mark.parametrize("name", UNFITTED_ON_LOGITS)
def test_confident_logits_score_lower_than_flat_ones(name):
    confident = 10.0 * F.one_hot(torch.arange(10), 10).float()
    logits = torch.cat([confident, torch.zeros(10, 10)])
    scores = build(name).score(ModelOutputs(logits=logits))
    assert scores[:10].max() < scores[10:].min()


# --- same values as before, and as pytorch-ood's -----------------------------------------------
@pytest.mark.parametrize("kind", ["baseline", "mlae"])
def test_our_five_equal_the_modules_scores(kind):
    module = trained(kind)
    x, _ = digits(20, seed=4)
    with torch.no_grad():
        expected = module.logits_and_scores(x)[1]
        outputs = module.model_outputs(x)
    detectors = build_detectors(compose_train().detectors, module.provides)
    assert sorted(expected) == sorted(n for n in OURS if n in detectors)
    for name, values in expected.items():
        assert torch.equal(detectors[name].score(outputs), values), name


def test_msp_max_logit_energy_agree_with_pytorch_ood():
    torch.manual_seed(0)
    with torch.no_grad():
        model_logits = trained("baseline")(digits(20, seed=5)[0])
    for logits in (torch.randn(50, 10) * 4, model_logits):
        outputs = ModelOutputs(logits=logits)
        # osr's msp is 1 - max softmax, pytorch-ood's -max softmax: the same ranking
        assert torch.allclose(
            build("msp").score(outputs), 1 + MaxSoftmax(None).predict_logits(logits)
        )
        assert torch.equal(
            build("max_logit").score(outputs), OODMaxLogit(None).predict_logits(logits)
        )
        assert torch.allclose(
            build("energy").score(outputs), EnergyBased(None).predict_logits(logits)
        )


# pytorch-ood's classes wired to the model by hand: the reference for osr.detectors.PytorchOOD
BY_HAND = {
    "vim": lambda o: {"w": o.head.weight, "b": o.head.bias},
    "dice": lambda o: {"w": o.head.weight, "b": o.head.bias},
    "react": lambda o: {"head": lambda maps: o.head(maps.flatten(1))},
    "ash": lambda o: {"head": lambda maps: o.head(maps.flatten(1))},
    "fdbd": lambda o: {"head": o.head},
    "odin": lambda o: {"model": o.classify},
}
REPRESENTATION = {
    "logits": lambda o: o.logits,
    "features": lambda o: o.features,
    "feature_maps": lambda o: o.features[:, :, None, None],
    "images": lambda o: o.images,
}
ADAPTED = [n for n in ALL if compose_train().detectors[n]._target_ == "osr.detectors.PytorchOOD"]


@pytest.mark.parametrize("kind", ["baseline", "mlae"])
@pytest.mark.parametrize("name", ADAPTED)
def test_adapted_detectors_score_as_pytorch_ood_does(name, kind):
    entry = compose_train().detectors[name]
    arguments = {k: v for k, v in entry.detector.items() if k not in ("_target_", "_partial_")}
    train, test = split_outputs(kind, "cpu")
    reference = get_class(entry.detector._target_)(
        **arguments, **BY_HAND.get(name, lambda o: {})(train)
    )
    inputs = REPRESENTATION[entry.inputs]
    if getattr(reference, "requires_fit", False):
        getattr(reference, f"fit_{entry.inputs}")(inputs(train), train.labels)
    predict = (
        reference.predict
        if entry.inputs == "images"
        else getattr(reference, f"predict_{entry.inputs}")
    )
    ours = build(name).fit(train)
    with torch.no_grad():
        assert torch.allclose(ours.score(test), predict(inputs(test)).float(), atol=1e-6)


# --- fitted feature detectors --------------------------------------------------------------------
def clustered_features(n: int, centers: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(centers)
    return centers[labels] + 0.3 * torch.randn(n, centers.shape[1], generator=g), labels


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "class_distance"])
def test_feature_detectors_score_far_points_higher(name):
    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(10, 64, generator=g)
    head = torch.nn.Linear(64, 10)
    features, labels = clustered_features(500, centers, seed=1)
    near, _ = clustered_features(50, centers, seed=2)
    far = 10 * torch.randn(50, 64, generator=g)
    detector = build(name)
    with torch.no_grad():
        detector.fit(
            ModelOutputs(logits=head(features), features=features, labels=labels, head=head)
        )
        test = torch.cat([near, far])
        scores = detector.score(ModelOutputs(logits=head(test), features=test, head=head))
    assert scores[:50].max() < scores[50:].min()


def test_class_distance_is_the_squared_distance_to_the_nearest_class_mean():
    train, test = split_outputs("baseline", "cpu")
    detector = build("class_distance").fit(train)
    features, labels = train.features.double().numpy(), train.labels.numpy()
    means = np.stack([features[labels == c].mean(0) for c in range(10)])
    queries = test.features.double().numpy()
    expected = ((queries[:, None] - means[None]) ** 2).sum(-1).min(1)
    assert np.allclose(detector.score(test).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_fit_samples_subsample_is_seeded():
    train, _ = split_outputs("baseline", "cpu")
    states = [
        build("knn", "detectors.knn.fit_samples=40", f"detectors.knn.seed={seed}")
        .fit(train)
        .fitted_state()
        for seed in (0, 0, 1)
    ]
    assert states[0]["refit.inputs"].shape == (40, 64)
    assert torch.equal(states[0]["refit.inputs"], states[1]["refit.inputs"])
    assert not torch.equal(states[0]["refit.inputs"], states[2]["refit.inputs"])
    rows = (states[0]["refit.inputs"][:, None] == train.features[None]).all(-1)
    assert (rows.sum(1) == 1).all()  # rows of the training split, each once


def test_registry_helpers_round_trip_all_fitted_states():
    train, test = split_outputs("mlae", "cpu")
    cfg = compose_train().detectors
    detectors = build_detectors(cfg)
    assert fit_needs(detectors) == {"features", "head", "logits"}
    fit_detectors(detectors, train.keep(fit_needs(detectors)))
    states = fitted_states(detectors)
    assert sorted(states) == sorted(n for n, d in detectors.items() if d.requires_fit)
    fresh = build_detectors(cfg)
    load_fitted_states(fresh, through_checkpoint(states))
    with torch.no_grad():
        expected, got = score_detectors(detectors, test), score_detectors(fresh, test)
    assert all(torch.equal(expected[n], got[n]) for n in detectors)
    del states["knn"]
    with pytest.raises(OSRError, match=r"no fitted state for detectors \['knn'\].*osr.calibrate"):
        load_fitted_states(build_detectors(cfg), states)


# --- a detector defined here, registered through the config only ------------------------------
class BrightnessShift(Detector):
    """How far an image's mean pixel is from the training images' mean pixel."""

    needs = frozenset({"images"})
    requires_fit = True
    state_names = ("mean",)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def _fit(self, outputs: ModelOutputs) -> None:
        self.mean = outputs.images.mean()

    def _score(self, outputs: ModelOutputs) -> Tensor:
        return self.scale * (outputs.images.flatten(1).mean(1) - self.mean).abs()


def test_a_detector_is_registered_by_config_alone():
    cfg = compose_train(
        f"+detectors.brightness._target_={__name__}.BrightnessShift",
        "+detectors.brightness.scale=2",
    )
    module = trained("baseline")
    detectors = build_detectors(cfg.detectors, module.provides)
    detector = detectors["brightness"]
    assert isinstance(detector, BrightnessShift) and detector.name == "brightness"
    train, test = split_outputs("baseline", "cpu")
    fit_detectors(detectors, train)
    expected = 2 * (test.images.flatten(1).mean(1) - train.images.mean()).abs()
    assert torch.allclose(score_detectors(detectors, test)["brightness"], expected)
    state = through_checkpoint(detector.fitted_state())
    reloaded = build_detectors(cfg.detectors)["brightness"]
    reloaded.load_fitted_state(state)
    assert torch.equal(reloaded.score(test), detector.score(test))


# --- the model hook -------------------------------------------------------------------------------
def test_convnet_features_and_head_give_its_logits():
    torch.manual_seed(0)
    net = ConvNet().eval()
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        # the notebook's layers, in eval mode (dropout is the identity)
        x1 = F.max_pool2d(F.relu(net.conv1(x)), 2)
        penultimate = F.relu(net.fc1(torch.flatten(F.max_pool2d(F.relu(net.conv2(x1)), 2), 1)))
        assert torch.equal(net.features(x), penultimate)
        assert torch.equal(net(x), net.fc2(penultimate))
        assert torch.equal(net.head(net.features(x)), net(x))
    assert net.head is net.fc2 and net.features(x).shape == (6, 64)
    assert list(net.state_dict()) == [
        f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")
    ]


@pytest.mark.parametrize("kind", ["baseline", "mlae"])
def test_model_outputs_come_from_one_pass(kind):
    module = trained(kind)
    classifier = module.net if kind == "baseline" else module.classifier
    calls = []
    hooks = [classifier.conv1.register_forward_hook(lambda *_: calls.append("classifier"))]
    if kind == "mlae":
        hook = module.autoencoder.encoder.conv.register_forward_hook(lambda *_: calls.append("ae"))
        hooks.append(hook)
    x = digits(8, seed=6)[0]
    try:
        with torch.no_grad():
            outputs = module.model_outputs(x)
            assert sorted(calls) == sorted(["classifier", *(["ae"] if kind == "mlae" else [])])
            calls.clear()
            module.model_outputs(x, needs={"features", "logits", "head"})
            assert calls == ["classifier"]
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        forward = module(x)
    logits = forward if kind == "baseline" else forward[1]
    assert torch.equal(outputs.logits, logits)
    if kind == "mlae":
        assert torch.equal(outputs.recon, forward[0])
    assert torch.equal(outputs.features, classifier.features(x))
    assert outputs.provided == module.provides
    assert outputs.head is classifier.fc2 and outputs.classify is classifier


def test_model_outputs_keep_subset_and_cat():
    _, test = split_outputs("mlae", "cpu")
    kept = test.keep({"features"})
    assert kept.images is None and kept.recon is None and kept.features is test.features
    halves = [test.subset(slice(0, 10)), test.subset(slice(10, None))]
    joined = ModelOutputs.cat(halves)
    for field in ("logits", "features", "images", "recon"):
        assert torch.equal(getattr(joined, field), getattr(test, field))
    assert joined.head is test.head and len(joined) == len(test)


# --- bad input --------------------------------------------------------------------------------
def test_a_null_entry_drops_a_detector():
    names = list(build_detectors(compose_train("detectors.knn=null").detectors))
    assert names == [n for n in ALL if n != "knn"]


def test_unknown_detector_names_are_listed():
    with pytest.raises(
        OSRError,
        match=r"model.voting_scores=\['msp', 'odim'\]: no detector named \['odim'\].*'odin'",
    ):
        check_names(
            ["msp", "odim"], build_detectors(compose_train().detectors), "model.voting_scores"
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+detectors.Bad._target_=osr.detectors.MSP"],
            r"detectors.Bad: a detector name is lower-case",
        ),
        (
            ["+detectors.raw._target_=pytorch_ood.detector.Entropy", "+detectors.raw.model=null"],
            r"detectors.raw: pytorch_ood.detector.Entropy is not an osr.detectors.Detector",
        ),
        (
            ["+detectors.gone._target_=osr.detectors.Nope"],
            r"detectors.gone: could not build osr.detectors.Nope \(Error locating target",
        ),
        (["+detectors.empty.k=3"], r"detectors.empty has no _target_"),
        (["+detectors.gen.bind.t=head"], r"detectors.gen: .*GEN.*add `_partial_: true`"),
        (["detectors.gen.inputs=pixels"], r"detectors.gen: .*inputs='pixels'; choose one of"),
        (["detectors.vim.bind.w=head.weights"], r"detectors.vim: .*bind=\{'w': 'head.weights'\}"),
    ],
)
def test_bad_detector_config_names_the_entry_and_the_fix(overrides, message):
    with pytest.raises(OSRError, match=message):
        build_detectors(compose_train(*overrides).detectors)


def test_fitting_needs_labels_and_loading_needs_matching_state():
    train, _ = split_outputs("baseline", "cpu")
    with pytest.raises(OSRError, match="'mahalanobis' is fitted on labelled outputs"):
        build("mahalanobis").fit(dataclasses.replace(train, labels=None))
    with pytest.raises(OSRError, match="'class_distance' holds \\['mu'\\].*keeps \\['centers'\\]"):
        build("class_distance").load_fitted_state({"mu": torch.zeros(3)})
    with pytest.raises(OSRError, match="'mahalanobis' holds \\['centers'\\]"):
        build("mahalanobis").load_fitted_state({"centers": torch.zeros(3)})
    with pytest.raises(OSRError, match="'msp' holds \\['centers'\\].*keeps \\[\\]"):
        build("msp").load_fitted_state({"centers": torch.zeros(3)})
