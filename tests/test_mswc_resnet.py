"""The native PyTorch port of EfficientWord-Net's ResNet-50 against its ONNX original, run
by onnxruntime: the front-end against a float64 numpy reference of EfficientWord-Net's
feature code, the network against onnxruntime on the same features, on real clips.

The ``eff_word_net`` package is never imported (its import pulls in PyAudio); the tests
find its ONNX file through the import spec, as the library does.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

if importlib.util.find_spec("eff_word_net") is None:
    pytest.skip("EfficientWord-Net's model is not installed: "
                "pip install --no-deps efficientword-net==1.0.5", allow_module_level=True)
pytest.importorskip("onnx", reason="converting the model needs onnx (metavox[pretrained])")
ort = pytest.importorskip("onnxruntime", reason="the parity reference needs onnxruntime")

from metavox.audio import onnx_port  # noqa: E402
from metavox.audio.io import load_clip  # noqa: E402
from metavox.audio.mswc_resnet import (  # noqa: E402
    NUM_BLOCKS,
    EmbeddingError,
    MswcFilterbank,
    MswcResNet,
    MswcResNetBody,
    block_shape,
    body_state,
    check_graph,
    num_frames,
    num_windows,
    onnx_file,
    pretrained_state,
    sliding_windows,
)

#: Measured on 40 random Speech Commands clips (1 s, zero-padded to 1.5 s; float32 port):
#: log filterbank values (-36 to +22) differ from the float64 reference by at most 7.4e-5;
#: the 2048-d unit vectors from onnxruntime's by at most 6.7e-7 per component, cosine
#: >= 0.9999998. The bounds leave room for other CPUs' summation order.
FEATURE_ATOL = 3e-4
EMBEDDING_ATOL = 1e-5
MIN_COSINE = 0.9999
WORDS = ("yes", "bird", "house", "zero")


def reference_logfbank(wave: np.ndarray) -> np.ndarray:
    """EfficientWord-Net's features in float64, written out step by step: rectangular
    400-sample frames every 160 samples (the last zero-padded), |rfft(512)|² / 512, 64
    triangular filters with bin-snapped mel edges, exact zeros -> float64 eps, natural
    log."""
    x = np.asarray(wave, dtype=np.float64)
    count = 1 if len(x) <= 400 else 1 + math.ceil((len(x) - 400) / 160)
    x = np.concatenate([x, np.zeros((count - 1) * 160 + 400 - len(x))])
    frames = np.stack([x[i * 160:i * 160 + 400] for i in range(count)])
    power = np.abs(np.fft.rfft(frames, 512)) ** 2 / 512

    def mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    mels = np.linspace(mel(0), mel(8000), 66)
    edges = np.floor(513 * 700 * (10 ** (mels / 2595) - 1) / 16000).astype(int)
    bank = np.zeros((64, 257))
    for j in range(64):
        lo, mid, hi = edges[j:j + 3]
        for k in range(lo, mid):
            bank[j, k] = (k - lo) / (mid - lo)
        for k in range(mid, hi):
            bank[j, k] = (hi - k) / (hi - mid)
    energy = power @ bank.T
    energy[energy == 0] = np.finfo(np.float64).eps
    return np.log(energy)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small CPU workloads only lose to thread hand-offs, badly
    so on a busy machine (gradgradcheck: 1 s on one thread, 40 s on two while loaded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(onnx_file()), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return MswcResNet(cache=tmp_path_factory.mktemp("weights")).eval()


@pytest.fixture(scope="module")
def clips(shared_data) -> np.ndarray:
    """One clip per word, 1.5 s (the 1 s clips zero-padded: frames of digital silence)."""
    root = shared_data / "speech_commands_v2_test"
    files = [sorted((root / w).glob("*.flac"))[0] for w in WORDS]
    return np.stack([load_clip(f, 16000, 1.5) for f in files])


def onnx_embedding(session, features: np.ndarray) -> np.ndarray:
    """The ONNX model's embedding of one ``[149, 64]`` feature map (it takes batch 1)."""
    return session.run(None, {"input": features[None, None].astype(np.float32)})[0][0]


def test_front_end_matches_the_reference_on_real_clips(clips):
    ours = MswcFilterbank()(torch.from_numpy(clips)).numpy()
    assert ours.shape == (len(WORDS), 149, 64)
    for wave, feat in zip(clips, ours, strict=True):
        ref = reference_logfbank(wave)
        assert ref.min() == pytest.approx(math.log(np.finfo(np.float64).eps))  # the padding
        np.testing.assert_allclose(feat, ref, atol=FEATURE_ATOL, rtol=0)
    # the microphone's int16 scale
    scaled = MswcFilterbank(input_scale=32768.0)(torch.from_numpy(clips[:1]))[0].numpy()
    np.testing.assert_allclose(scaled, reference_logfbank(clips[0] * 32768.0),
                               atol=FEATURE_ATOL, rtol=0)


@pytest.mark.parametrize("length", [100, 400, 401, 560, 16000, 24000])
def test_front_end_frames_any_length_as_the_reference(length):
    wave = 0.1 * np.random.default_rng(length).standard_normal(length)
    feat = MswcFilterbank()(torch.from_numpy(wave)[None])[0].numpy()  # float64 in, out
    assert feat.shape == (num_frames(length), 64)
    np.testing.assert_allclose(feat, reference_logfbank(wave), atol=1e-6, rtol=0)
    assert num_frames(24000) == 149


def test_embeddings_match_onnxruntime_on_real_clips(model, session, clips):
    """Batched port, from waveforms, against the ONNX model one clip at a time, fed the
    reference features; and the body alone on those same features."""
    ref_feats = [reference_logfbank(w) for w in clips]
    refs = np.stack([onnx_embedding(session, f) for f in ref_feats])
    with torch.no_grad():
        ours = model(torch.from_numpy(clips)).numpy()
        body = model.body(torch.from_numpy(np.stack(ref_feats)).float()[:, None]).numpy()
    assert ours.shape == refs.shape == (len(WORDS), 2048)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    for got in (ours, body):
        np.testing.assert_allclose(got, refs, atol=EMBEDDING_ATOL, rtol=0)
        assert (got * refs).sum(1).min() > MIN_COSINE
    # distinct words get distinct embeddings
    cos = ours @ ours.T
    assert cos[~np.eye(len(WORDS), dtype=bool)].max() < 0.9
    assert "eff_word_net" not in sys.modules  # found, never imported


def test_sliding_windows_embed_every_window(model, clips):
    wave = torch.from_numpy(np.concatenate([clips[0], clips[1][:16000]]))[None]  # 2.5 s
    assert num_windows(40000, 4000) == 5 and num_windows(16000) == 1
    with torch.no_grad():
        out = model.embed_windows(wave, hop=4000, batch=2)
        one = model(wave[:, 8000:32000])
    assert out.shape == (1, 5, 2048)
    torch.testing.assert_close(out[0, 2], one[0], atol=1e-6, rtol=0)
    assert sliding_windows(torch.zeros(2, 16000)).shape == (2, 1, 24000)


@pytest.mark.parametrize("top", [1, 4])
def test_lower_blocks_then_the_top_blocks_equal_the_whole_model(model, clips, top):
    """A frozen lower part (what the feature cache stores) and a pretrained top of ``top``
    blocks give the whole model's answer; the slices' names are the full model's."""
    state = model.body.state_dict()  # the pretrained weights
    cut = NUM_BLOCKS - top
    lower, upper = MswcResNetBody(0, cut), MswcResNetBody(cut)
    lower.load_state_dict(body_state(state, lower))
    upper.load_state_dict(body_state(state, upper))
    x = model.features(torch.from_numpy(clips[:2])).unsqueeze(1)
    with torch.no_grad():
        mid = lower(x)
        assert tuple(mid.shape[1:]) == block_shape(cut)
        torch.testing.assert_close(upper(mid), model.body(x), atol=1e-6, rtol=0)
    names = {n for n, _ in upper.named_parameters()}
    assert names <= {n for n, _ in model.body.named_parameters()}
    assert {n.split(".")[1] for n in names if n.startswith("blocks.")} == {
        str(i) for i in range(cut, NUM_BLOCKS)} and "head.weight" in names
    assert block_shape(0) == (1, 149, 64) and block_shape(16) == (2048, 5, 2)
    assert block_shape(NUM_BLOCKS) == (2048,)
    with pytest.raises(ValueError):
        MswcResNetBody(5, 3)


def test_second_order_gradients_through_the_top_block_match_finite_differences(model):
    """MAML through the pretrained top block and head in float64: the meta-gradient of the
    query loss after one inner SGD step matches central differences along random
    directions, and differs from the first-order gradient (the Hessian term is there)."""
    top = MswcResNetBody(NUM_BLOCKS - 1).double()
    top.load_state_dict(body_state({k: v.double() for k, v in model.body.state_dict().items()},
                                   top))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2048, 2, 1, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    classes = torch.randn(3, 2048, generator=gen, dtype=torch.float64)
    names = [n for n, _ in top.named_parameters()]

    def loss(params, xs, ys):
        emb = torch.func.functional_call(top, dict(zip(names, params, strict=True)), (xs,))
        return torch.nn.functional.cross_entropy(20.0 * emb @ classes.T, ys)

    def post_adaptation(params, create_graph):
        grads = torch.autograd.grad(loss(params, x[:3], y[:3]), params,
                                    create_graph=create_graph)
        fast = [p - 10.0 * g for p, g in zip(params, grads, strict=True)]
        return loss(fast, x[3:], y[3:])

    theta = [p.detach().clone().requires_grad_() for p in top.parameters()]
    meta = torch.autograd.grad(post_adaptation(theta, True), theta)
    first = torch.autograd.grad(post_adaptation(theta, False), theta)
    # unit directions and a small step: a larger one moves ReLU inputs across zero, where
    # the inner gradient jumps
    eps = 1e-5
    for _ in range(3):
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in theta]
        norm = torch.sqrt(sum(d.square().sum() for d in v))
        v = [d / norm for d in v]
        plus = [(p + eps * d).detach().requires_grad_() for p, d in zip(theta, v, strict=True)]
        minus = [(p - eps * d).detach().requires_grad_() for p, d in zip(theta, v, strict=True)]
        fd = (post_adaptation(plus, False) - post_adaptation(minus, False)).item() / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(meta, v, strict=True)).item()
        first_order = sum((g * d).sum() for g, d in zip(first, v, strict=True)).item()
        assert analytic == pytest.approx(fd, rel=1e-6)  # measured: 3e-9 to 9e-9
        assert abs(first_order - fd) > 0.5 * abs(fd)


def test_front_end_gradients_are_right_to_second_order():
    wave = 0.1 * torch.randn(420, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fbank = MswcFilterbank()
    wave.requires_grad_()
    assert torch.autograd.gradcheck(lambda w: fbank(w[None]), (wave,))
    assert torch.autograd.gradgradcheck(lambda w: fbank(w[None]).sum(1), (wave,),
                                        fast_mode=True)


def test_weights_are_converted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("METAVOX_CACHE", str(tmp_path))
    state = pretrained_state()
    cached = list((tmp_path / "mswc-resnet50").glob("*.safetensors"))
    assert len(cached) == 1 and len(state) == 4 + 2 * 53 + 4
    import metavox.audio.mswc_resnet as mr

    monkeypatch.setattr(mr, "convert_onnx", lambda *a: pytest.fail("converted again"))
    again = pretrained_state()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)


def test_a_changed_graph_is_refused_naming_what_differs():
    import onnx

    graph = onnx.load(str(onnx_file())).graph
    weights = onnx_port.initializers(graph)
    assert len(check_graph(graph, weights)) == 114
    convs = [n for n in graph.node if n.op_type == "Conv"]
    stride = next(a for a in convs[12].attribute if a.name == "strides")
    stride.ints[:] = [1, 1]
    with pytest.raises(EmbeddingError, match=r"strides=\[1, 1\], expected \[2, 2\]"):
        check_graph(graph, weights)
    stride.ints[:] = [2, 2]
    graph.node[-1].op_type = "Mul"
    with pytest.raises(EmbeddingError, match="is a Mul, expected a Div"):
        check_graph(graph, weights)


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(onnx_port.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddingError, match=r"pip install --no-deps efficientword-net==1\.0\.5"):
        onnx_file()
