"""II loss scores with the class means of the whole known training split after training, in
eval mode (the authors' code), not with running means of the last epoch's training batches;
they travel in the checkpoint, so osr.evaluate gives the run's figures again."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from osr.evaluate import evaluate_checkpoint
from osr.modules.open_set import OBJECTIVE_KEY
from osr.objectives import IILoss
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from osr.utils.errors import OSRError
from tests.conftest import TINY_TRAINING


def eval_mode_class_means(z: np.ndarray, labels: np.ndarray, ii: IILoss) -> np.ndarray:
    """numpy: the head's outputs ``z`` normalized by the running statistics, averaged per
    class."""
    norm = ii.embedding_norm
    mean, var = norm.running_mean.double().numpy(), norm.running_var.double().numpy()
    normalized = (z - mean) / np.sqrt(var + norm.eps)
    return np.stack([normalized[labels == c].mean(0) for c in range(ii.num_classes)])


def test_fitted_means_are_eval_mode_means_and_restart_with_training():
    torch.manual_seed(0)
    ii, head = IILoss(num_classes=3, feature_dim=4), nn.Linear(4, 3)
    ii.train()
    for _ in range(3):  # moves the running statistics and the running means
        features, labels = torch.randn(12, 4) + 2, torch.arange(12) % 3
        ii.loss(features, ii.logits(features, head), labels, head)
    assert not ii.is_fitted and ii.fitted_state() == {}
    features, labels = torch.randn(30, 4), torch.arange(30) % 3
    with torch.no_grad():
        ii.fit_after_training(features, labels, head)
        z = head(features).double().numpy()
    assert ii.training and ii.is_fitted  # fitted in eval mode, left in training mode
    expected = eval_mode_class_means(z, labels.numpy(), ii)
    np.testing.assert_allclose(ii.means.numpy(), expected, atol=1e-5)

    again = IILoss(num_classes=3, feature_dim=4)
    again.load_state_dict(ii.state_dict())
    again.load_fitted_state(ii.fitted_state())
    assert torch.equal(again.means, ii.means)
    again.load_fitted_state({})
    assert not again.is_fitted
    with pytest.raises(OSRError, match="class means"):
        again.load_fitted_state({"centers": ii.means})
    ii.start_epoch()  # training moves the embedding: the means restart
    assert not ii.is_fitted and torch.equal(ii.means, torch.zeros(3, 3))


@pytest.mark.slow
def test_ii_class_means_are_those_of_every_training_image_in_eval_mode(
    train_cfg, evaluate_cfg, tmp_path
):
    """After a real fit: the means in the best checkpoint (and in the trained module) are
    numpy's means of the eval-mode embeddings of every training image, class by class; the
    checkpoint evaluates to the run's figures."""
    _, objects = train(train_cfg("model=baseline", "objective=ii", *TINY_TRAINING))
    trained, datamodule = objects["model"], objects["datamodule"]
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt = read_checkpoint(best)
    module = module_from_checkpoint(ckpt).eval()
    images, labels = datamodule.train_set.tensors
    net = module.classifier_net
    with torch.no_grad():
        features = net.features(datamodule.transform(images))
        z = nn.functional.linear(
            features.double(), net.head.weight.double(), net.head.bias.double()
        )
    expected = eval_mode_class_means(z.numpy(), labels.numpy(), module.objective)
    difference = np.abs(module.objective.means.double().numpy() - expected).max()
    assert difference < 1e-4, difference
    assert torch.equal(ckpt[OBJECTIVE_KEY]["means"], module.objective.means)
    assert torch.equal(trained.objective.means.cpu(), module.objective.means)

    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    again = evaluate_checkpoint(evaluate_cfg(best))
    for key, value in saved.items():
        assert again[key] == (value if isinstance(value, list) else pytest.approx(value)), key
