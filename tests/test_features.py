"""Log-mel / MFCC against independent references (librosa, scipy, a NumPy STFT)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from data_paths import SHARED_DATA

from metavox.audio.features import (
    MFCC,
    FrontendConfig,
    LogMel,
    build_frontend,
    dct_matrix,
    mel_filterbank,
)

librosa = pytest.importorskip("librosa", reason="librosa (test extra) is the reference")

DATA = SHARED_DATA


def _speech() -> np.ndarray:
    """One second of real speech if the shared data is there, else a deterministic chirp."""
    files = sorted((DATA / "speech_commands_v2_test" / "yes").glob("*.flac"))
    if files:
        import soundfile as sf

        wave, sr = sf.read(files[0], dtype="float64")
        assert sr == 16000
        return wave[:16000]
    t = np.arange(16000) / 16000
    return 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.01 * np.cos(9000 * t)


def _librosa_logmel(wave: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=cfg.sample_rate,
        n_fft=cfg.fft_size,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm=cfg.mel_norm,
        dtype=np.float64,
    )
    return np.log(mel + cfg.log_eps)


def test_default_config_geometry() -> None:
    cfg = FrontendConfig()
    assert (cfg.win_length, cfg.hop_length, cfg.fft_size, cfg.n_freqs) == (400, 160, 512, 257)
    assert cfg.num_samples == 16000 and cfg.num_frames == 101 and cfg.num_features == 40
    assert FrontendConfig(kind="mfcc", n_mfcc=13).num_features == 13
    assert FrontendConfig(sample_rate=8000).fft_size == 256
    assert FrontendConfig(n_fft=1024).fft_size == 1024
    assert FrontendConfig(duration=0.5).num_frames == 51
    out = LogMel()(torch.zeros(16000))
    assert out.shape == (40, 101)


def test_config_roundtrip_and_validation() -> None:
    cfg = FrontendConfig(kind="mfcc", n_mfcc=13, f_max=7600.0, trim=True)
    d = cfg.to_dict()
    assert FrontendConfig.from_dict(d) == cfg
    import json

    assert FrontendConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FrontendConfig.from_dict({**d, "bogus": 1})
    for bad in (
        {"kind": "spectrogram"},
        {"f_max": 9000.0},
        {"f_min": 500.0, "f_max": 400.0},
        {"n_fft": 256},
        {"kind": "mfcc", "n_mfcc": 41},
        {"mel_scale": "bark"},
        {"log_eps": 0.0},
    ):
        with pytest.raises(ValueError):
            FrontendConfig(**bad)
    with pytest.raises(ValueError):
        MFCC(n_mels=20, n_mfcc=30)
    with pytest.raises(dataclasses_error()):
        cfg.n_mels = 3  # type: ignore[misc]


#: A default config's dict as every config stored it before the second encoder (feature
#: cache keys hash it; checkpoints hold it)
OLD_DEFAULT = {
    "sample_rate": 16000, "duration": 1.0, "n_mels": 40, "win_ms": 25.0, "hop_ms": 10.0,
    "n_fft": None, "f_min": 0.0, "f_max": None, "kind": "logmel", "n_mfcc": 40, "trim": False,
    "log_eps": 1e-6, "mel_scale": "slaney", "mel_norm": "slaney", "center": True,
    "pad_mode": "constant", "embedding_blocks": 20,
}


@pytest.mark.parametrize("changes", [{}, {"kind": "mfcc", "n_mfcc": 13},
                                     {"kind": "speech-embedding", "duration": 2.0},
                                     {"kind": "speech-embedding", "embedding_blocks": 19}],
                         ids=["logmel", "mfcc", "speech-embedding", "speech-embedding-top"])
def test_old_dicts_load_and_give_the_same_dict_back(changes) -> None:
    """``embedding_blocks`` counts the blocks of the kind's encoder (None: all of them);
    the dicts stored before the second encoder load unchanged, and configs built now
    give those same dicts (so the same feature-cache keys)."""
    old = {**OLD_DEFAULT, **changes}
    cfg = FrontendConfig.from_dict(old)
    assert cfg.to_dict() == old
    built = FrontendConfig(**changes)
    assert built.to_dict() == old and built == cfg
    mswc = FrontendConfig(kind="mswc-resnet")
    assert mswc.embedding_blocks == 17 and mswc.to_dict()["embedding_blocks"] == 17
    assert FrontendConfig(kind="speech-embedding").embedding_blocks == 20
    with pytest.raises(ValueError, match=r"0\.\.17 for 'mswc-resnet', got 20"):
        FrontendConfig.from_dict({**OLD_DEFAULT, "kind": "mswc-resnet"})
    with pytest.raises(ValueError, match="16000"):
        FrontendConfig(kind="mswc-resnet", sample_rate=8000)


def dataclasses_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    ("scale", "norm", "f_min", "f_max"),
    [("slaney", "slaney", 0.0, None), ("htk", None, 20.0, 7600.0), ("slaney", None, 50.0, 4000.0)],
)
def test_mel_filterbank_matches_librosa(scale, norm, f_min, f_max) -> None:
    fb = mel_filterbank(257, 40, 16000, f_min, f_max, scale=scale, norm=norm, dtype=torch.float64)
    ref = librosa.filters.mel(
        sr=16000,
        n_fft=512,
        n_mels=40,
        fmin=f_min,
        fmax=f_max,
        htk=scale == "htk",
        norm=norm,
        dtype=np.float64,
    )
    assert fb.shape == (257, 40)
    np.testing.assert_allclose(fb.numpy().T, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("overrides", [{}, {"n_mels": 64, "f_min": 20.0, "f_max": 7600.0}])
def test_logmel_matches_librosa(overrides) -> None:
    cfg = FrontendConfig(**overrides)
    wave = _speech()
    ref = _librosa_logmel(wave, cfg)
    got64 = LogMel(cfg).double()(torch.from_numpy(wave)).numpy()
    assert got64.shape == ref.shape == (cfg.n_mels, 101)
    np.testing.assert_allclose(got64, ref, atol=1e-8)
    got32 = LogMel(cfg)(torch.from_numpy(wave).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, atol=2e-3)  # float32 on ln-scale values


def test_logmel_htk_scale_matches_librosa() -> None:
    cfg = FrontendConfig(mel_scale="htk", mel_norm=None, sample_rate=8000, n_mels=23)
    wave = _speech()[:8000]
    got = LogMel(cfg).double()(torch.from_numpy(wave)).numpy()
    np.testing.assert_allclose(got, _librosa_logmel(wave, cfg), atol=1e-8)


def test_logmel_matches_numpy_stft() -> None:
    """A second reference written here: frame, window, rFFT, filterbank, log."""
    cfg = FrontendConfig()
    wave = _speech()
    n_fft, hop, win = cfg.fft_size, cfg.hop_length, cfg.win_length
    padded = np.pad(wave, n_fft // 2)
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [T, n_freqs]
    fb = librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=40, dtype=np.float64)
    ref = np.log(power @ fb.T + cfg.log_eps).T
    got = LogMel().double()(torch.from_numpy(wave)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-8)


def test_mfcc_is_orthonormal_dct_of_logmel() -> None:
    cfg = FrontendConfig(kind="mfcc", n_mfcc=13)
    wave = _speech()
    ref = scipy.fft.dct(_librosa_logmel(wave, cfg), type=2, norm="ortho", axis=0)[:13]
    got = MFCC(cfg).double()(torch.from_numpy(wave)).numpy()
    assert got.shape == (13, 101)
    np.testing.assert_allclose(got, ref, atol=1e-7)
    d = dct_matrix(40, 40, torch.float64)
    torch.testing.assert_close(d.T @ d, torch.eye(40, dtype=torch.float64))
    # also librosa's own MFCC given the same log-mel (its DCT is scipy's)
    lib = librosa.feature.mfcc(S=_librosa_logmel(wave, cfg), n_mfcc=13, dct_type=2, norm="ortho")
    np.testing.assert_allclose(got, lib, atol=1e-7)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_leading_dims(kind: str) -> None:
    cfg = FrontendConfig(kind=kind, n_mfcc=20)
    fe = build_frontend(cfg)
    assert isinstance(fe, MFCC if kind == "mfcc" else LogMel)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8000, generator=g) * 0.1
    f = cfg.num_features
    one = fe(x[0, 0])
    assert one.shape == (f, 51)
    assert fe(x[0]).shape == (3, f, 51)
    full = fe(x)
    assert full.shape == (2, 3, f, 51)
    torch.testing.assert_close(full[1, 2], fe(x[1, 2]), rtol=1e-5, atol=1e-5)
    assert cfg.frames_for(8000) == 51


def test_dtype_device_and_to() -> None:
    fe = LogMel()
    names = {n for n, _ in fe.named_buffers()}
    assert {"window", "mel_fb"} <= names
    assert sum(p.numel() for p in fe.parameters()) == 0  # nothing to train
    x = torch.from_numpy(_speech())
    fe64 = LogMel().to(torch.float64)
    assert fe64.mel_fb.dtype == torch.float64
    out64 = fe64(x)
    assert out64.dtype == torch.float64
    out32 = fe(x.float())
    torch.testing.assert_close(out32.double(), out64, atol=2e-3, rtol=0)
    # a float32 module given float64 input computes in float64
    assert fe(x).dtype == torch.float64
    # integer PCM input works (as float32)
    assert fe((x * 1000).to(torch.int16).float()).dtype == torch.float32
    assert fe((x * 1000).to(torch.int16)).dtype == torch.float32
    if torch.cuda.is_available():
        gpu = LogMel().to("cuda")
        torch.testing.assert_close(gpu(x.float().cuda()).cpu(), out32, atol=1e-3, rtol=0)


def test_module_state_dict_and_overrides() -> None:
    fe = LogMel(n_mels=32, f_max=7000.0)
    assert fe.config.n_mels == 32 and fe.mel_fb.shape == (257, 32)
    other = LogMel(FrontendConfig(n_mels=32, f_max=7000.0))
    other.load_state_dict(fe.state_dict())
    assert "n_mels=32" in repr(fe)
    assert build_frontend().config == FrontendConfig()


def test_short_and_silent_input() -> None:
    fe = LogMel()
    short = fe(torch.zeros(100))  # shorter than a window: zero padding, no error
    assert short.shape == (40, 1)
    torch.testing.assert_close(short, torch.full_like(short, float(np.log(1e-6))))
    assert torch.isfinite(fe(torch.zeros(4, 16000))).all()


def test_gradients_flow() -> None:
    x = (torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_()
    MFCC(n_mfcc=13)(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
