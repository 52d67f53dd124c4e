"""Conv-4: the standard few-shot backbone (Vinyals et al. 2016; Finn et al. 2017).

Four blocks of 3x3 convolution (64 channels), BatchNorm, ReLU and 2x2 max-pooling, then a
linear head. On a 40x101 log-mel input the body gives 64x2x6 = 768 features.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU, 2x2 max-pool (floor)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """``head(body(x))`` on ``x [B, in_channels, H, W]``; ``body`` ends flattened."""

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int] = (40, 101),
        *,
        in_channels: int = 1,
        channels: int = 64,
        blocks: int = 4,
    ) -> None:
        super().__init__()
        layers = [conv_block(in_channels if i == 0 else channels, channels) for i in range(blocks)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        h, w = input_shape
        for _ in range(blocks):
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {input_shape} is too small for {blocks} pooling blocks")
        self.feature_dim = channels * h * w
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
