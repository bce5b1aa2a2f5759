"""The notebook's baseline classifier."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_output_side(side: int, kernel_size: int, padding: int) -> int:
    """Side of a stride-1 convolution's output."""
    return side - 2 * (kernel_size // 2) + 2 * padding


class ConvNet(nn.Module):
    """Two conv blocks (conv, ReLU, 2x2 max-pool, Dropout2d) and two fully connected layers,
    for images of ``input_shape`` (channels, height, width), square.

    Unlike the notebook, whose dropout outputs were discarded, dropout is applied. In eval
    mode ``head(features(x))`` equals ``forward(x)`` (dropout is then the identity).
    """

    def __init__(
        self,
        num_classes: int = 10,
        kernel_size: int = 5,
        channels: tuple[int, int] = (10, 20),
        hidden: int = 64,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        conv_dropout: float = 0.5,
        fc1_dropout: float = 0.5,
        fc2_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(input_shape[0], c1, kernel_size, stride=1, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size, stride=1, padding=1)
        side = conv_output_side(input_shape[-1], kernel_size, 1) // 2
        side = conv_output_side(side, kernel_size, 1) // 2
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.conv_dropout = nn.Dropout2d(conv_dropout)
        self.fc1_dropout = nn.Dropout(fc1_dropout)
        self.fc2_dropout = nn.Dropout(fc2_dropout)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, hidden): what ``head`` turns into logits.

        Feature-based detectors (Mahalanobis, KNN, ViM, ...) read these.
        """
        x = self.conv_dropout(F.max_pool2d(F.relu(self.conv1(x)), 2))
        x = self.conv_dropout(F.max_pool2d(F.relu(self.conv2(x)), 2))
        x = self.fc1_dropout(torch.flatten(x, 1))
        return F.relu(self.fc1(x))

    @property
    def head(self) -> nn.Linear:
        """The last layer, features -> logits. A property, not a second registered name for
        ``fc2``, so state_dict keys stay those of older checkpoints."""
        return self.fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc2_dropout(self.features(x)))
