"""A small MLP: the sinusoid-regression network of Finn et al. 2017 (1-40-40-1, ReLU)."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``head(body(x))``: hidden ReLU layers, then a linear output layer."""

    def __init__(
        self, num_classes: int = 1, input_shape: int | tuple[int, ...] = 1, *,
        hidden: tuple[int, ...] = (40, 40),
    ) -> None:
        super().__init__()
        in_dim = input_shape if isinstance(input_shape, int) else _prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            in_dim = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = in_dim
        self.head = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
