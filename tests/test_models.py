"""Backbones: shapes, feature sizes, parameter budgets, registry errors, and that every conv
backbone is exact under the engine (loop and vmap give the same second-order meta-gradient)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metavox.meta import MAML
from metavox.models import (
    ALIASES,
    DESCRIPTIONS,
    DSCNN,
    REGISTRY,
    ResNet8,
    UnknownOptionError,
    create_model,
    list_models,
    model_options,
)

MODELS = sorted(list_models())


#: the fusion reads its own front-end's layout: 96 values per speech-embedding window
#: (two windows here), then the ResNet's 2048, in one frame
FUSION_SHAPE = (96 * 2 + 2048, 1)


def build(name: str, input_shape=(40, 101), num_classes: int = 5, **options) -> nn.Module:
    shape = 1 if name == "mlp" and input_shape == (40, 101) else input_shape
    shape = FUSION_SHAPE if name == "fusion" else shape
    return create_model(name, num_classes=num_classes, input_shape=shape, **options)


def example_input(name: str, input_shape=(40, 101), batch: int = 3) -> torch.Tensor:
    if name == "mlp" and input_shape == (40, 101):
        return torch.randn(batch, 1)
    if name == "fusion":
        return torch.randn(batch, 1, *FUSION_SHAPE)
    return torch.randn(batch, 1, *input_shape)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_every_model_once_with_a_description():
    assert MODELS == ["conv4", "dscnn", "fusion", "mlp", "mswc-resnet", "resnet8",
                      "speech-embedding"]
    assert set(REGISTRY) == set(MODELS) | set(ALIASES)
    assert all(DESCRIPTIONS[n] and "\n" not in DESCRIPTIONS[n] for n in MODELS)
    assert isinstance(create_model("res8", num_classes=2, input_shape=(40, 101)), ResNet8)


@pytest.mark.parametrize("input_shape", [(40, 101), (20, 51)], ids=["40x101", "20x51"])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_feature_dim(name, input_shape):
    torch.manual_seed(0)
    model = build(name, input_shape)
    x = example_input(name, input_shape)
    with torch.no_grad():
        feats, out = model.body(x), model(x)
    assert feats.shape == (3, model.feature_dim)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == model.feature_dim
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    torch.testing.assert_close(out, model.head(feats))


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("conv4", 100_000, 120_000),  # 3x3 convs at 64 channels
        ("mlp", 1_000, 3_000),  # 1-40-40
        ("dscnn", 20_000, 40_000),  # DS-CNN-S: ~22k (depthwise 3x3 + pointwise 64x64) x 4
        ("resnet8", 100_000, 120_000),  # res8: ~110k in the paper
    ],
)
def test_parameter_budgets_before_the_head(name, low, high):
    model = build(name)
    assert low <= count(model.body) <= high
    assert count(model.head) == (model.feature_dim + 1) * 5
    assert count(model) == count(model.body) + count(model.head)


@pytest.mark.parametrize("name", MODELS)
def test_no_in_place_ops(name):
    """In-place activations break double backward through the inner loop."""
    for module in build(name).modules():
        assert not getattr(module, "inplace", False), f"{name}: in-place {module}"


def test_options_change_the_architecture():
    small = create_model("dscnn", num_classes=3, input_shape=(40, 101), channels=16, blocks=2)
    assert small.feature_dim == 16 and sum(isinstance(m, nn.ReLU) for m in small.modules()) == 5
    stereo = create_model("resnet8", num_classes=3, input_shape=(40, 101), in_channels=2)
    assert stereo(torch.randn(2, 2, 40, 101)).shape == (2, 3)
    no_pool = create_model("res8", num_classes=3, input_shape=(8, 8), pool=None, channels=4)
    assert not any(isinstance(m, nn.AvgPool2d) for m in no_pool.modules())
    assert no_pool(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert "pool" in model_options("resnet8") and "channels" in model_options("dscnn")


def test_create_model_errors():
    with pytest.raises(ValueError, match=r"unknown model 'res9'.*did you mean 'res8'"):
        create_model("res9", num_classes=2, input_shape=(40, 101))
    with pytest.raises(UnknownOptionError, match=r"'width'.*'dscnn'.*channels"):
        create_model("dscnn", num_classes=2, input_shape=(40, 101), width=3)
    with pytest.raises(TypeError, match=r"'hidden'.*'res8'.*pool"):  # and a ValueError
        create_model("res8", num_classes=2, input_shape=(40, 101), hidden=(4,))
    with pytest.raises(ValueError, match="too small"):
        DSCNN(2, (1, 101))
    with pytest.raises(ValueError, match="too small"):
        ResNet8(2, (2, 101))
    with pytest.raises(ValueError, match="input_shape"):
        ResNet8(2, 40)


# -- exactness under the engine ------------------------------------------------------------
TINY = {
    "conv4": ((8, 8), {"channels": 3, "blocks": 2}),
    "dscnn": ((8, 20), {"channels": 4, "blocks": 2}),
    "resnet8": ((9, 16), {"channels": 4, "blocks": 2}),
}


def episodes(shape, tasks=3, ways=3, shots=2, queries=2, seed=0):
    """Float64 episodes ``[T, N*K, 1, H, W]`` with labels 0..N-1 and a class signal."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, ways, 1, *shape, generator=g, dtype=torch.float64)

    def draw(n):
        y = torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
        noise = torch.randn(tasks, ways * n, 1, *shape, generator=g, dtype=torch.float64)
        return centres[torch.arange(tasks)[:, None], y] + 0.5 * noise, y

    return (*draw(shots), *draw(queries))


def meta_gradient(model: nn.Module, batch, strategy: str) -> torch.Tensor:
    algo = MAML(copy.deepcopy(model), inner_lr=0.3, steps=2, strategy=strategy)
    algo(batch).loss.backward()
    return torch.cat([p.grad.flatten() for p in algo.model.parameters()])


@pytest.mark.parametrize("name", sorted(TINY))
def test_loop_and_vmap_give_the_same_second_order_meta_gradient(name):
    shape, options = TINY[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, input_shape=shape, **options).double()
    batch = episodes(shape)
    g_loop = meta_gradient(model, batch, "loop")
    g_vmap = meta_gradient(model, batch, "vmap")
    assert g_loop.norm() > 0 and torch.isfinite(g_loop).all()
    assert float((g_vmap - g_loop).norm() / g_loop.norm()) < 1e-10


def test_a_backbone_can_declare_its_front_end(monkeypatch, tmp_path):
    from metavox.models import FRONTENDS, model_frontend
    from metavox.pipeline.config import ConfigError, config_from_dict

    assert model_frontend("conv4") == {}  # the from-scratch backbones take any front-end
    monkeypatch.setitem(FRONTENDS, "conv4", lambda options: {"n_mels": 32, "hop_ms": 20.0})
    cfg = config_from_dict({"model": {"name": "conv4"}, "frontend": {"duration": 0.5}})
    fe = cfg.frontend_config()
    assert (fe.n_mels, fe.hop_ms, fe.duration) == (32, 20.0, 0.5)
    with pytest.raises(ConfigError, match="needs n_mels = 32"):
        config_from_dict({"model": {"name": "conv4"}, "frontend": {"n_mels": 40}})


def test_the_speech_embedding_front_end_stops_below_the_trainable_blocks():
    from metavox.pipeline.config import ConfigError, config_from_dict

    frozen = config_from_dict({"model": {"name": "speech-embedding"}}).frontend_config()
    assert (frozen.embedding_blocks, frozen.num_features, frozen.num_frames) == (20, 96, 16)
    top2 = config_from_dict({"model": {"name": "speech-embedding",
                                       "options": {"trainable_blocks": 2}}}).frontend_config()
    assert (top2.embedding_blocks, top2.num_features) == (18, 96 * 8 * 2)
    with pytest.raises(ConfigError, match="needs embedding_blocks = 19"):
        config_from_dict({"model": {"name": "speech-embedding",
                                    "options": {"trainable_blocks": 1}},
                          "frontend": {"embedding_blocks": 20}})


def test_the_mswc_resnet_declares_its_front_end_like_the_speech_embedding():
    """Both pretrained bases declare their encoder's front-end; no weights are needed to
    build the frozen model (its trainable part is the pooled, normalised head)."""
    from metavox.pipeline.config import ConfigError, config_from_dict

    frozen = config_from_dict({"model": {"name": "mswc-resnet"}}).frontend_config()
    assert (frozen.kind, frozen.sample_rate, frozen.duration) == ("mswc-resnet", 16000, 1.5)
    assert (frozen.embedding_blocks, frozen.num_features, frozen.num_frames) == (17, 2048, 1)
    top = config_from_dict({"model": {"name": "mswc-resnet",
                                      "options": {"trainable_blocks": 1}}}).frontend_config()
    assert (top.embedding_blocks, top.num_features) == (16, 2048 * 5 * 2)
    with pytest.raises(ConfigError, match="needs kind = 'mswc-resnet'"):
        config_from_dict({"model": {"name": "mswc-resnet"},
                          "frontend": {"kind": "speech-embedding"}}).frontend_config()
    model = create_model("mswc-resnet", num_classes=4, input_shape=(2048, 1), adapter=True)
    assert model.feature_dim == 2048 and model.body.top is None
    assert model_options("mswc-resnet") == model_options("speech-embedding")
