import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from osr.callbacks.history import EpochHistory
from osr.models import Autoencoder, ConvNet, Decoder, Encoder
from osr.modules import AutoencoderClassifier, Classifier
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from tests.helpers import StepLosses, WeightsPerEpoch

OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
CLASSES = [str(i) for i in range(10)]


def make_module(kind: str):
    if kind == "baseline":
        return Classifier({"_target_": "osr.models.ConvNet"}, OPTIMIZER, CLASSES)
    return AutoencoderClassifier(
        {"_target_": "osr.models.Autoencoder"},
        {"_target_": "osr.models.ConvNet"},
        OPTIMIZER,
        CLASSES,
    )


def test_output_shapes():
    x = torch.randn(7, 1, 28, 28)
    assert ConvNet()(x).shape == (7, 10)
    assert ConvNet(num_classes=6)(x).shape == (7, 6)
    z, indices = Encoder()(x)
    assert z.shape == (7, 32) and indices.shape == (7, 10, 13, 13)
    assert Decoder()(z, indices).shape == (7, 1, 28, 28)
    assert Autoencoder(latent_dim=16, hidden=(64, 32))(x).shape == x.shape
    recon, logits = make_module("mlae")(x)
    assert recon.shape == x.shape and logits.shape == (7, 10)


def test_notebook_layer_sizes():
    net = ConvNet()
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features) == (500, 64, 10)
    enc, dec = Encoder(), Decoder()
    linears = [m for m in enc.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1690, 128), (128, 64), (64, 32)]
    linears = [m for m in dec.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 128), (128, 1690)]


def test_unpool_places_values_at_the_encoders_indices():
    torch.manual_seed(0)
    enc, dec = Encoder(), Decoder()
    a, b = torch.randn(2, 1, 1, 28, 28)
    z, idx_a = enc(a)
    _, idx_b = enc(b)
    unpooled = dec.unpooled(z, idx_a)  # (1, 10, 26, 26)
    flat = unpooled.flatten(2)
    allowed = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, idx_a.flatten(2), True)
    assert (flat[~allowed] == 0).all()
    assert (flat[allowed] != 0).float().mean() > 0.9
    assert not torch.allclose(dec(z, idx_a), dec(z, idx_b))


def test_decoder_output_equals_its_transposed_convolution():
    torch.manual_seed(0)
    dec = Decoder()
    z, indices = Encoder()(torch.randn(4, 1, 28, 28))
    z = z.detach().requires_grad_(True)
    expected = dec.deconv(torch.relu(dec.unpooled(z, indices)))
    ours = dec(z, indices)
    assert torch.allclose(ours, expected, atol=1e-5)
    upstream = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, (z, dec.deconv.weight, dec.deconv.bias), upstream)
    expected_grads = torch.autograd.grad(
        expected, (z, dec.deconv.weight, dec.deconv.bias), upstream
    )
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.allclose(grad, expected_grad, atol=1e-4)


@pytest.mark.parametrize("kind", ["baseline", "mlae"])
def test_dropout_active_in_train_mode_only(kind):
    torch.manual_seed(0)
    module = make_module(kind)
    x = torch.randn(8, 1, 28, 28)
    module.train()
    assert not torch.allclose(
        module._loss(x, torch.zeros(8, dtype=torch.long))[1],
        module._loss(x, torch.zeros(8, dtype=torch.long))[1],
    )
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.logits_and_scores(x)[0], module.logits_and_scores(x)[0])


@pytest.mark.parametrize("kind", ["baseline", "mlae"])
def test_one_step_lowers_the_loss(kind):
    torch.manual_seed(0)
    module = make_module(kind).eval()  # eval: the loss is compared without dropout noise
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    optimizer = module.build_optimizer()
    before, _, _ = module._loss(x, y)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, _, _ = module._loss(x, y)
    assert after < before


def test_mlae_loss_weights_reconstruction_and_classification():
    torch.manual_seed(0)
    module = make_module("mlae").eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    recon, logits = module(x)
    loss, _, extra = module._loss(x, y)
    expected = F.mse_loss(recon, x) + F.cross_entropy(logits, y)
    assert torch.allclose(loss, expected) and torch.allclose(extra["rec_mse"], F.mse_loss(recon, x))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "mlae"])
def test_train_entry_point_fast_dev_run(train_cfg, model):
    metrics, _ = train(train_cfg(f"model={model}", "trainer.fast_dev_run=true"))
    assert "test/acc" in metrics and 0 <= metrics["test/acc"] <= 1


def assert_same_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor but the thresholds (NaN while training, calibrated after fit)."""
    state = module.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        if key != "thresholds":
            assert torch.equal(state[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "mlae"])
def test_checkpoint_loads_back_into_an_identical_model(train_cfg, tmp_path, model):
    # 32 validation images reach accuracy 1 in the second epoch: the third only ties it, so
    # best.ckpt (epoch 1) and last.ckpt (epoch 2) hold different weights
    cfg = train_cfg(
        f"model={model}",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=1",
        "evaluate=false",
        "+callbacks.weights._target_=tests.helpers.WeightsPerEpoch",
    )
    metrics, objects = train(cfg)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc"):
        assert key in metrics, key
    if model == "mlae":
        assert "val/rec_mse" in metrics
    seen = next(c for c in objects["trainer"].callbacks if isinstance(c, WeightsPerEpoch))
    best_epoch = max(seen.val_acc, key=seen.val_acc.get)  # the first of equals, as Lightning
    last_epoch = max(seen.weights)
    assert best_epoch < last_epoch, seen.val_acc

    ckpt_dir = tmp_path / "run" / "checkpoints"
    trained = objects["model"].eval()
    assert trained.is_calibrated
    for name, epoch in (("best.ckpt", best_epoch), ("last.ckpt", last_epoch)):
        loaded = module_from_checkpoint(read_checkpoint(ckpt_dir / name)).eval()
        assert type(loaded) is type(trained)
        assert_same_weights(loaded, seen.weights[epoch])
    assert_same_weights(trained, seen.weights[best_epoch])  # the best weights, restored
    best = module_from_checkpoint(read_checkpoint(ckpt_dir / "best.ckpt")).eval()
    assert best.threshold_dict() == trained.threshold_dict()  # calibrated for these weights
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(trained.logits_and_scores(x)[0], best.logits_and_scores(x)[0])


@pytest.mark.slow
def test_epoch_figures_are_the_sample_weighted_means_of_the_steps(train_cfg, tmp_path):
    # 300 training images in batches of 128: the last batch of each epoch holds 44
    cfg = train_cfg(
        "model=mlae",
        "trainer.max_epochs=2",
        "trainer.limit_val_batches=1",
        "data.batch_size=128",
        "+callbacks.step_losses._target_=tests.helpers.StepLosses",
    )
    _, objects = train(cfg)
    callbacks = objects["trainer"].callbacks
    steps = next(c for c in callbacks if isinstance(c, StepLosses)).steps
    history = next(c for c in callbacks if isinstance(c, EpochHistory)).epochs
    logged = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    for epoch in (0, 1):
        losses = np.array([loss for e, loss, _ in steps if e == epoch])
        sizes = np.array([n for e, _, n in steps if e == epoch])
        assert sizes.tolist() == [128, 128, 44]
        expected = float(np.average(losses, weights=sizes))
        row = next(r for r in logged if r["epoch"] == str(epoch) and r["train/loss"])
        assert float(row["train/loss"]) == pytest.approx(expected, rel=1e-5)
        assert float(row["train/rec_mse"]) > 0
        assert history[epoch]["train/loss"] == pytest.approx(expected, rel=1e-5)
        assert history[epoch]["train/acc"] == pytest.approx(float(row["train/acc"]), abs=1e-6)
        assert history[epoch]["val/acc"] == pytest.approx(
            float(next(r for r in logged if r["epoch"] == str(epoch) and r["val/acc"])["val/acc"])
        )
