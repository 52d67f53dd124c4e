"""DS-CNN: the depthwise-separable keyword-spotting network of Zhang et al. 2017 ("Hello Edge").

A regular convolution with a wide time kernel and stride 2 shrinks the log-mel input, then
``blocks`` depthwise-separable blocks (3x3 depthwise conv, BN, ReLU; 1x1 pointwise conv,
BN, ReLU) keep the resolution, and a global average pool gives ``channels`` features.
DS-CNN-S (64 channels, 4 blocks) has about 22k parameters before the head.

Inputs are ``[B, in_channels, n_mels, frames]``: the paper's 10x4 (time x frequency) first
kernel is therefore ``(4, 10)`` here. Convolutions feeding BatchNorm carry no bias (BN's
shift makes it redundant). Every op is out-of-place, for the engine's vmap and double
backward.
"""

from __future__ import annotations

from torch import Tensor, nn


class GlobalAvgPool(nn.Module):
    """Mean over the two spatial dims: ``[B, C, H, W] -> [B, C]`` (pure, vmap-safe)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


def spatial_shape(input_shape, model: str) -> tuple[int, int]:
    """``input_shape`` as ``(n_mels, frames)``, or a ``ValueError`` naming ``model``."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if len(shape) != 2:
        raise ValueError(f"{model} needs input_shape=(n_mels, frames), got {input_shape!r}")
    return int(shape[0]), int(shape[1])


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one dimension (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def ds_block(channels: int) -> nn.Sequential:
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
    )


class DSCNN(nn.Module):
    """``head(body(x))`` on ``x [B, in_channels, n_mels, frames]``; body gives ``[B, channels]``.

    Args:
        num_classes: outputs of the linear head.
        input_shape: ``(n_mels, frames)``, checked against the first convolution.
        channels: width of every layer (64 for DS-CNN-S, 172 for DS-CNN-M).
        blocks: number of depthwise-separable blocks (4 for S and M).
        in_channels: input feature planes (1 for log-mel).
        kernel, stride: the first convolution's kernel and stride, ``(mel, frame)`` order.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int] = (40, 101),
        *,
        channels: int = 64,
        blocks: int = 4,
        in_channels: int = 1,
        kernel: tuple[int, int] = (4, 10),
        stride: tuple[int, int] = (2, 2),
    ) -> None:
        super().__init__()
        if channels < 1 or blocks < 0 or in_channels < 1:
            raise ValueError(
                f"DSCNN needs channels >= 1, blocks >= 0, in_channels >= 1; got "
                f"{channels}, {blocks}, {in_channels}"
            )
        (h, w), kernel, stride = spatial_shape(input_shape, "DSCNN"), tuple(kernel), tuple(stride)
        padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
        out_h = conv_out(h, kernel[0], stride[0], padding[0])
        out_w = conv_out(w, kernel[1], stride[1], padding[1])
        if min(out_h, out_w) < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for a {kernel} kernel")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            *(ds_block(channels) for _ in range(blocks)),
            GlobalAvgPool(),
        )
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
