"""res8: the small-footprint keyword-spotting ResNet of Tang & Lin 2018.

A 3x3 convolution, an average pool that cuts the time-frequency map (the paper's 4x3 over
time x frequency), ``blocks`` residual blocks of two 3x3 convolutions with identity
shortcuts at a constant width, and a global average pool. At 45 channels and 3 blocks it
has about 110k parameters before the head, as in the paper.

Departures from the reference code, kept deliberately: each convolution is followed by a
BatchNorm *with* affine parameters (MAML adapts them, MAML++ learns them per step) and the
block is the usual conv-BN-ReLU-conv-BN, add, ReLU. Inputs are ``[B, C, n_mels, frames]``,
so the paper's 4x3 (time x frequency) pool is ``(3, 4)`` here. All ops are out-of-place.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from metavox.models.dscnn import GlobalAvgPool, spatial_shape


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 'same' convolution without bias (BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` at constant width and resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + x)


class ResNet8(nn.Module):
    """``head(body(x))`` on ``x [B, in_channels, n_mels, frames]``; body gives ``[B, channels]``.

    Args:
        num_classes: outputs of the linear head.
        input_shape: ``(n_mels, frames)``, checked against the pool.
        channels: width of every layer (45 in res8, 19 in res8-narrow).
        blocks: residual blocks (3 in res8: 1 + 2*3 = 7 convolutions).
        pool: average-pool kernel (= stride) after the first convolution, ``(mel, frame)``
            order, or ``None`` for no pooling.
        in_channels: input feature planes (1 for log-mel).
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int] = (40, 101),
        *,
        channels: int = 45,
        blocks: int = 3,
        pool: tuple[int, int] | None = (3, 4),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if channels < 1 or blocks < 0 or in_channels < 1:
            raise ValueError(
                f"ResNet8 needs channels >= 1, blocks >= 0, in_channels >= 1; got "
                f"{channels}, {blocks}, {in_channels}"
            )
        stem: list[nn.Module] = [
            conv3x3(in_channels, channels), nn.BatchNorm2d(channels), nn.ReLU()
        ]
        h, w = spatial_shape(input_shape, "ResNet8")
        if pool is not None:
            pool = tuple(pool)
            if h // pool[0] < 1 or w // pool[1] < 1:
                raise ValueError(f"input {tuple(input_shape)} is too small for a {pool} pool")
            stem.append(nn.AvgPool2d(pool))
        self.body = nn.Sequential(
            *stem, *(ResidualBlock(channels) for _ in range(blocks)), GlobalAvgPool()
        )
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
