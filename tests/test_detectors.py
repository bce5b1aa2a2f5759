"""Detectors and the model hook they read."""

import torch
import torch.nn.functional as F

from osr.models import ConvNet


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
