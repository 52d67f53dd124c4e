"""Audio I/O: real shared files, resampling, trimming, fixed length, and every bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_paths import SHARED_DATA

from metavox.audio.io import (
    AudioError,
    audio_info,
    fix_length,
    load_audio,
    load_clip,
    resample,
    save_audio,
    trim_silence,
)

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared speech data not found at {DATA}")
FSDD_FILE = DATA / "fsdd" / "recordings" / "7_jackson_32.wav"


def _sc_flac() -> Path:
    files = sorted((DATA / "speech_commands_v2_test" / "yes").glob("*.flac"))
    assert files, "no Speech Commands FLAC under yes/"
    return files[0]


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)])


# --- real files ---------------------------------------------------------------------------


@needs_data
def test_fsdd_8k_wav_resampled_to_16k() -> None:
    info = audio_info(FSDD_FILE)
    assert (info.sample_rate, info.channels, info.format) == (8000, 1, "WAV")
    native = load_audio(FSDD_FILE, sample_rate=None)
    wave = load_audio(FSDD_FILE)  # 16 kHz default
    assert native.dtype == wave.dtype == np.float32 and wave.ndim == 1
    assert len(native) == info.frames
    assert len(wave) == 2 * info.frames
    assert np.abs(wave).max() <= 1.0 and np.abs(wave).max() > 0.01
    # spectral content is kept: the dominant frequency is the same at both rates
    assert abs(_peak_hz(native, 8000) - _peak_hz(wave, 16000)) < 10.0


@needs_data
def test_speech_commands_flac() -> None:
    path = _sc_flac()
    info = audio_info(path)
    assert (info.sample_rate, info.format, info.duration) == (16000, "FLAC", info.frames / 16000)
    wave = load_audio(path)
    assert wave.shape == (info.frames,) and wave.dtype == np.float32
    np.testing.assert_array_equal(wave, sf.read(path, dtype="float32")[0])  # no resampling
    clip = load_clip(path, duration=1.0)
    assert clip.shape == (16000,)


# --- resampling ---------------------------------------------------------------------------


def test_resample_sine_keeps_frequency_and_length_ratio() -> None:
    x = _tone(440.0, 8000, 0.5)
    y = resample(x, 8000, 16000)
    assert len(y) == 2 * len(x) and y.dtype == np.float32
    assert abs(_peak_hz(y, 16000) - 440.0) < 3.0
    z = resample(x, 8000, 11025)  # gcd-reduced odd ratio (441/320)
    assert len(z) == int(np.ceil(len(x) * 11025 / 8000))
    assert abs(_peak_hz(z, 11025) - 440.0) < 3.0
    # amplitude is kept away from the edges
    assert abs(np.abs(y[1000:-1000]).max() - 0.5) < 0.01


def test_resample_identity_and_multichannel() -> None:
    x = np.random.default_rng(0).standard_normal((2, 800)).astype(np.float64)
    same = resample(x, 16000, 16000)
    assert same is not x and np.array_equal(same, x)
    down = resample(x, 16000, 8000)
    assert down.shape == (2, 400) and down.dtype == np.float64
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


# --- trim / fix_length / load_clip ----------------------------------------------------------


def test_trim_silence_tone_padded_with_silence() -> None:
    sr = 16000
    tone = _tone(300.0, sr, 0.4)
    wave = np.concatenate([np.zeros(sr // 2, np.float32), tone, np.zeros(sr, np.float32)])
    trimmed = trim_silence(wave, sr)
    frame = int(0.025 * sr)
    assert len(tone) <= len(trimmed) <= len(tone) + 2 * frame
    # the whole tone is kept, and only silence was cut
    assert np.count_nonzero(trimmed) == np.count_nonzero(tone)


def test_trim_silence_edge_cases() -> None:
    silent = np.zeros(8000, np.float32)
    assert np.array_equal(trim_silence(silent, 16000), silent)
    click = np.zeros(8000, np.float32)
    click[4000] = 0.5
    out = trim_silence(click, 16000)
    assert 0 < len(out) <= 2 * 400  # never empty for non-silent input
    assert out.max() == 0.5
    short = np.full(10, 0.3, np.float32)  # shorter than one frame
    assert np.array_equal(trim_silence(short, 16000), short)


def test_fix_length_center_random_start() -> None:
    x = np.arange(10, dtype=np.float32) + 1
    np.testing.assert_array_equal(fix_length(x, 4), [4, 5, 6, 7])
    np.testing.assert_array_equal(fix_length(x, 14), [0, 0, *x, 0, 0])
    np.testing.assert_array_equal(fix_length(x, 13)[:1], [0])
    np.testing.assert_array_equal(fix_length(x, 4, mode="start"), [1, 2, 3, 4])
    np.testing.assert_array_equal(fix_length(x, 12, mode="start")[-2:], [0, 0])
    a = [fix_length(x, 4, mode="random", rng=np.random.default_rng(s)) for s in range(20)]
    b = [fix_length(x, 4, mode="random", rng=np.random.default_rng(s)) for s in range(20)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))  # deterministic
    assert len({tuple(u) for u in a}) > 1  # but not constant
    for u in a:  # a contiguous window of x
        assert len(u) == 4 and np.array_equal(np.diff(u), [1, 1, 1])
    padded = fix_length(x, 16, mode="random", rng=np.random.default_rng(1))
    assert len(padded) == 16 and padded.sum() == x.sum()
    assert fix_length(np.ones((2, 5)), 3).shape == (2, 3)  # works on the last axis
    with pytest.raises(ValueError, match="rng"):
        fix_length(x, 4, mode="random")
    with pytest.raises(ValueError):
        fix_length(x, 4, mode="middle")


def test_load_clip_trim_and_crop(tmp_path: Path) -> None:
    sr = 16000
    wave = np.concatenate([np.zeros(sr, np.float32), _tone(500, sr, 0.3), np.zeros(sr)])
    path = tmp_path / "padded.wav"
    save_audio(path, wave, sr, subtype="FLOAT")
    plain = load_clip(path, sr, 1.0)
    assert plain.shape == (sr,)
    trimmed = load_clip(path, sr, 1.0, trim=True)
    assert trimmed.shape == (sr,)
    assert np.abs(trimmed[: sr // 4]).max() == 0  # tone centred, zeros around it
    assert np.abs(trimmed[sr // 2 - 100 : sr // 2 + 100]).max() > 0.4
    r = load_clip(path, 8000, 0.5, crop="random", rng=np.random.default_rng(3))
    assert r.shape == (4000,)


# --- formats and saving -------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
def test_roundtrip_formats(tmp_path: Path, ext: str) -> None:
    x = _tone(440, 16000, 0.5)
    path = tmp_path / f"tone{ext}"
    save_audio(path, x, 16000)
    y = load_audio(path)
    assert y.dtype == np.float32 and len(y) == len(x)
    if ext == ".ogg":  # lossy: same pitch, similar level
        assert abs(_peak_hz(y, 16000) - 440) < 3 and abs(np.std(y) - np.std(x)) < 0.05
    else:
        np.testing.assert_allclose(y, x, atol=1 / 32768 + 1e-7)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # temp file gone


def test_mp3(tmp_path: Path) -> None:
    if "MP3" not in sf.available_formats():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) has no MP3 support")
    x = _tone(440, 16000, 0.5)
    path = tmp_path / "tone.mp3"
    save_audio(path, x, 16000)
    info = audio_info(path)
    assert info.format == "MP3" and info.sample_rate == 16000
    y = load_audio(path)
    assert abs(len(y) - len(x)) < 1200  # encoder delay/padding is allowed
    assert abs(_peak_hz(y, 16000) - 440) < 3


def test_stereo_and_mono_mixdown(tmp_path: Path) -> None:
    left, right = _tone(300, 16000, 0.2), _tone(700, 16000, 0.2, amp=0.25)
    path = tmp_path / "stereo.wav"
    save_audio(path, np.stack([left, right]), 16000, subtype="FLOAT")
    assert audio_info(path).channels == 2
    both = load_audio(path, mono=False)
    assert both.shape == (2, len(left))
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)
    assert load_audio(path, 8000, mono=False).shape == (2, len(left) // 2)


def test_save_audio_is_atomic_and_rejects_nan(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    save_audio(path, np.zeros(100, np.float32), 16000)
    before = path.read_bytes()
    bad = np.zeros(100, np.float32)
    bad[3] = np.nan
    with pytest.raises(ValueError):
        save_audio(path, bad, 16000)
    assert path.read_bytes() == before
    with pytest.raises(Exception):  # noqa: B017 - libsndfile's own error type
        save_audio(tmp_path / "x.unknownext", np.zeros(10), 16000)
    assert sorted(os.listdir(tmp_path)) == ["x.wav"]


# --- bad input ----------------------------------------------------------------------------


def _zero_length_wav(path: Path) -> None:
    sf.write(path, np.zeros(0, np.float32), 16000)


def _truncated_wav(path: Path) -> None:
    sf.write(path, _tone(440, 16000, 1.0), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_wav(path: Path) -> None:
    x = _tone(440, 16000, 0.1)
    x[10] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")


def _inf_wav(path: Path) -> None:
    x = _tone(440, 16000, 0.1)
    x[-1] = np.inf
    sf.write(path, x, 16000, subtype="FLOAT")


BAD = {
    "empty.wav": (lambda p: p.write_bytes(b""), "empty"),
    "zero_length.wav": (_zero_length_wav, "no audio frames"),
    "truncated.wav": (_truncated_wav, "truncated"),
    "random_bytes.wav": (
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "not a readable audio file",
    ),
    "notes.flac": (lambda p: p.write_text("this is text, not FLAC\n" * 20), "not a readable"),
    "nan.wav": (_nan_wav, "NaN"),
    "inf.wav": (_inf_wav, "infinite"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise_audio_error_naming_the_file(tmp_path: Path, name: str) -> None:
    make, problem = BAD[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert name in str(err.value) and problem in str(err.value)
    assert err.value.path == str(path)
    assert isinstance(err.value, ValueError)
    with pytest.raises(AudioError, match=name):
        load_clip(path)


def test_header_level_problems_fail_in_audio_info(tmp_path: Path) -> None:
    for name in ("empty.wav", "zero_length.wav", "truncated.wav", "notes.flac"):
        BAD[name][0](tmp_path / name)
        with pytest.raises(AudioError, match=name):
            audio_info(tmp_path / name)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nothere\.wav: no such file"):
        load_audio(tmp_path / "nothere.wav")
    with pytest.raises(AudioError, match="not a regular file"):
        audio_info(tmp_path)


def test_truncated_flac(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(path)


def test_audio_error_forms_and_pickling() -> None:
    import pickle

    err = AudioError("clips/a.wav", "contains NaN or infinite samples")
    assert str(err) == "clips/a.wav: contains NaN or infinite samples"
    back = pickle.loads(pickle.dumps(err))  # e.g. raised in a worker process
    assert (type(back), str(back), back.path, back.problem) == (
        AudioError,
        str(err),
        "clips/a.wav",
        err.problem,
    )
    plain = AudioError("b.wav: something")  # one-argument form
    assert str(plain) == "b.wav: something" and plain.path is None
    assert str(pickle.loads(pickle.dumps(plain))) == "b.wav: something"


def test_file_names_that_are_not_utf8(tmp_path) -> None:
    """A byte 0xFF in a file name (kept by Python as a surrogate) still opens, and a bad
    file under such a name is reported as an AudioError, not a UnicodeEncodeError."""
    good = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"yes\xff.wav"))
    sf.write(os.fsencode(good), _tone(440, 16000, 0.25), 16000)
    assert audio_info(good).sample_rate == 16000
    assert load_audio(good).shape == (4000,)
    bad = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"no\xfe.wav"))
    with open(os.fsencode(bad), "wb") as f:
        f.write(b"RIFF1234WAVEjunk")
    with pytest.raises(AudioError):
        load_audio(bad)
