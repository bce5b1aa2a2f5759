"""ResNet-18 for 32x32 images, built from torchvision's ResNet: the CIFAR stem (one 3x3
convolution, stride 1, no max-pool) in place of ImageNet's 7x7 stride-2 convolution and
max-pool, so the four stages see 32, 16, 8 and 4 pixels a side."""

import torch
from torch import Tensor, nn
from torchvision.models import resnet18


class CIFARResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        net = resnet18(num_classes=num_classes)
        net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.net = net

    def features(self, x: Tensor) -> Tensor:
        """The pooled 512 activations (B, 512), what ``head`` turns into logits."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    @property
    def head(self) -> nn.Linear:
        return self.net.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.net.fc(self.features(x))
