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
    """conv, ReLU, 2x2 max-pool (indices kept), flatten, MLP down to the latent vector.
    ``input_shape``: (channels, height, width) of the images, square."""

    def __init__(
        self,
        channels: int = 10,
        kernel_size: int = 5,
        hidden: tuple[int, ...] = (128, 64),
        latent_dim: int = 32,
        input_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], channels, kernel_size, stride=1, padding=1)
        self.conv_side = conv_output_side(input_shape[-1], kernel_size, 1)
        self.mlp = _mlp([channels * (self.conv_side // 2) ** 2, *hidden, latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, indices = F.max_pool2d(F.relu(self.conv(x)), 2, return_indices=True)
        return self.mlp(torch.flatten(x, 1)), indices


class Decoder(nn.Module):
    """MLP up from the latent vector, un-flatten, max-unpool with the encoder's indices,
    ReLU, transposed conv back to the image's ``out_channels``."""

    def __init__(
        self,
        channels: int = 10,
        kernel_size: int = 5,
        hidden: tuple[int, ...] = (64, 128),
        latent_dim: int = 32,
        conv_side: int = 26,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        self.conv_side = conv_side
        pooled_side = conv_side // 2
        self.shape = (channels, pooled_side, pooled_side)
        self.mlp = _mlp([latent_dim, *hidden, channels * pooled_side**2])
        self.deconv = nn.ConvTranspose2d(channels, out_channels, kernel_size, stride=1, padding=1)

    def unpooled(self, z: Tensor, indices: Tensor) -> Tensor:
        """Feature map before the transposed conv: non-zero only at the encoder's maxima."""
        x = torch.unflatten(self.mlp(z), 1, self.shape)
        return F.max_unpool2d(x, indices, 2, output_size=(self.conv_side, self.conv_side))

    def forward(self, z: Tensor, indices: Tensor) -> Tensor:
        # A stride-1 transposed conv is a conv with the kernel flipped and in/out swapped.
        # With few output channels that conv is a per-channel (depthwise) conv, one group per
        # input channel, summed over the input channels: the form oneDNN runs fastest on CPU
        # (one output channel: forward and backward about 1.7x faster than the dense conv,
        # which is itself about 4x faster than ConvTranspose2d). That holds in NHWC only: in
        # NCHW oneDNN's depthwise backward is 2-3x slower, and max-unpooling hands back NCHW,
        # so input and kernel are put in channels_last here (whatever the module's format).
        nhwc = torch.channels_last
        x = F.relu(self.unpooled(z, indices)).contiguous(memory_format=nhwc)
        channels, out_channels, k, _ = self.deconv.weight.shape
        padding = k - 1 - self.deconv.padding[0]
        weight = self.deconv.weight.flip(-2, -1).reshape(channels * out_channels, 1, k, k)
        weight = weight.contiguous(memory_format=nhwc)
        per_channel = F.conv2d(x, weight, padding=padding, groups=channels)
        if out_channels > 1:
            per_channel = per_channel.unflatten(1, (channels, out_channels))
        return per_channel.sum(1, keepdim=out_channels == 1) + self.deconv.bias.view(1, -1, 1, 1)


class Autoencoder(nn.Module):
    """Encoder and decoder with mirrored widths for images of ``input_shape`` (channels,
    height, width); the notebook's sizes are the defaults."""

    def __init__(
        self,
        channels: int = 10,
        kernel_size: int = 5,
        hidden: tuple[int, ...] = (128, 64),
        latent_dim: int = 32,
        input_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        input_shape = tuple(input_shape)
        self.encoder = Encoder(channels, kernel_size, tuple(hidden), latent_dim, input_shape)
        self.decoder = Decoder(
            channels,
            kernel_size,
            tuple(reversed(hidden)),
            latent_dim,
            self.encoder.conv_side,
            out_channels=input_shape[0],
        )

    def forward(self, x: Tensor) -> Tensor:
        z, indices = self.encoder(x)
        return self.decoder(z, indices)
