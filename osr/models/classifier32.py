"""``classifier32``, the VGG-style network of the open-set literature (the ARPL code's
``classifier32``, the "VGG32" of Vaze et al., 2022), so that published rows compare like
for like: nine 3x3 convolutions with batch norm and LeakyReLU(0.2), every third with stride
2, channel dropout (0.2) before each block of three, global average pooling, and a linear
head without bias."""

from torch import Tensor, nn


def _block(widths: list[int]) -> list[nn.Module]:
    """Three convs with BN and LeakyReLU; the last has stride 2."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        stride = 2 if i == len(widths) - 2 else 1
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2),
        ]
    return layers


class Classifier32(nn.Module):
    """The literature's widths (64, 64, 128 | 128 x 3 | 128 x 3) and initialization
    (convolutions N(0, 0.05), batch-norm scales N(1, 0.02))."""

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c = input_shape[0]
        self.body = nn.Sequential(
            nn.Dropout2d(dropout),
            *_block([c, 64, 64, 128]),
            nn.Dropout2d(dropout),
            *_block([128, 128, 128, 128]),
            nn.Dropout2d(dropout),
            *_block([128, 128, 128, 128]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(128, num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """The pooled 128 activations (B, 128), what ``head`` turns into logits."""
        return self.body(x)

    @property
    def head(self) -> nn.Linear:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))
