"""The notebook's autoencoder: a conv + fully connected encoder and its mirror image.

The decoder un-pools with the encoder's max-pool indices, so a reconstruction is built
from where the input's strongest activations were.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osr.models.convnet import conv_output_side


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """conv, ReLU, 2x2 max-pool (indices kept), flatten, MLP down to the latent vector."""

    def __init__(
        self,
        channels: int = 10,
        kernel_size: int = 5,
        hidden: tuple[int, ...] = (128, 64),
        latent_dim: int = 32,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size, stride=1, padding=1)
        self.conv_side = conv_output_side(image_size, kernel_size, 1)
        self.mlp = _mlp([channels * (self.conv_side // 2) ** 2, *hidden, latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, indices = F.max_pool2d(F.relu(self.conv(x)), 2, return_indices=True)
        return self.mlp(torch.flatten(x, 1)), indices


class Decoder(nn.Module):
    """MLP up from the latent vector, un-flatten, max-unpool with the encoder's indices,
    ReLU, transposed conv back to one channel."""

    def __init__(
        self,
        channels: int = 10,
        kernel_size: int = 5,
        hidden: tuple[int, ...] = (64, 128),
        latent_dim: int = 32,
        conv_side: int = 26,
    ) -> None:
        super().__init__()
        self.conv_side = conv_side
        pooled_side = conv_side // 2
        self.shape = (channels, pooled_side, pooled_side)
        self.mlp = _mlp([latent_dim, *hidden, channels * pooled_side**2])
        self.deconv = nn.ConvTranspose2d(channels, 1, kernel_size, stride=1, padding=1)

    def unpooled(self, z: Tensor, indices: Tensor) -> Tensor:
        """Feature map before the transposed conv: non-zero only at the encoder's maxima."""
        x = torch.unflatten(self.mlp(z), 1, self.shape)
        return F.max_unpool2d(x, indices, 2, output_size=(self.conv_side, self.conv_side))

    def forward(self, z: Tensor, indices: Tensor) -> Tensor:
        # A stride-1 transposed conv is a conv with the kernel flipped and in/out swapped.
        # With one output channel that conv is a per-channel (depthwise) conv summed over
        # channels, the form oneDNN runs fastest on CPU: forward and backward about 1.7x
        # faster than the dense conv, which is itself about 4x faster than ConvTranspose2d.
        x = F.relu(self.unpooled(z, indices))
        channels = x.shape[1]
        padding = self.deconv.kernel_size[0] - 1 - self.deconv.padding[0]
        per_channel = F.conv2d(x, self.deconv.weight.flip(-2, -1), padding=padding, groups=channels)
        return per_channel.sum(1, keepdim=True) + self.deconv.bias.view(1, -1, 1, 1)


class Autoencoder(nn.Module):
    """Encoder and decoder with mirrored widths; the notebook's sizes are the defaults."""

    def __init__(
        self,
        channels: int = 10,
        kernel_size: int = 5,
        hidden: tuple[int, ...] = (128, 64),
        latent_dim: int = 32,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(channels, kernel_size, tuple(hidden), latent_dim, image_size)
        self.decoder = Decoder(
            channels, kernel_size, tuple(reversed(hidden)), latent_dim, self.encoder.conv_side
        )

    def forward(self, x: Tensor) -> Tensor:
        z, indices = self.encoder(x)
        return self.decoder(z, indices)
