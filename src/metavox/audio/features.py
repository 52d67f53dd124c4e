"""Log-mel and MFCC features as batched ``nn.Module``s on ``torch.stft``.

The modules hold their window, mel filterbank and DCT matrix as buffers, so they follow
``.to(device, dtype)`` and run inside a model on CPU or GPU. They accept any leading
dimensions: ``[samples]``, ``[B, samples]``, ``[B, C, samples]`` ... -> ``[..., F, frames]``.

Defaults (:class:`FrontendConfig`): 16 kHz, 1 s clips, 25 ms periodic Hann window (400
samples) zero-padded to a 512-point FFT, 10 ms hop (160), ``center=True`` framing with zero
padding (so a 1 s clip gives 101 frames), power spectrum, 40 Slaney-style mel filters
(the mel scale and area normalisation of librosa's default / Slaney's Auditory Toolbox),
natural log with ``log_eps``. MFCC is the orthonormal DCT-II of that log-mel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from metavox.audio.encoders import ENCODERS

__all__ = [
    "EmbeddingFeatures",
    "FUSION",
    "FusionFeatures",
    "FrontendConfig",
    "fusion_layout",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "dct_matrix",
    "LogMel",
    "MFCC",
    "build_frontend",
    "shared_frontend",
]

#: the front-end kind running both encoders whole, frozen (:class:`FusionFeatures`)
FUSION = "fusion"
#: the encoders a fusion runs, in the order their features are stored
FUSION_ENCODERS = ("speech-embedding", "mswc-resnet")
_KINDS = ("logmel", "mfcc", *ENCODERS, FUSION)
#: ``embedding_blocks`` of the kinds without an encoder: the field's value before there
#: were two encoders (the speech embedding's 20 blocks), kept so that their configs'
#: dicts, and so their feature-cache keys, stay as they were
_NO_ENCODER_BLOCKS = 20
_SCALES = ("slaney", "htk")
_NORMS = ("slaney", None)


@dataclass(frozen=True)
class FrontendConfig:
    """Everything that determines the features; stored with caches and checkpoints."""

    sample_rate: int = 16000
    duration: float = 1.0  # seconds per clip
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None  # None: next power of two >= window length
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    #: "logmel" | "mfcc", or a pretrained encoder (:mod:`metavox.audio.encoders`):
    #: "speech-embedding" | "mswc-resnet", frozen, its windows' embeddings as features;
    #: or "fusion": both encoders, frozen, in one array (:class:`FusionFeatures`)
    kind: str = "logmel"
    n_mfcc: int = 40
    trim: bool = False  # trim leading/trailing silence when loading clips
    log_eps: float = 1e-6
    mel_scale: str = "slaney"  # "slaney" | "htk"
    mel_norm: str | None = "slaney"  # "slaney" (unit-area filters) | None (peak 1)
    center: bool = True
    pad_mode: str = "constant"  # padding for center=True framing (as librosa >= 0.10)
    #: encoder kinds only: the encoder's blocks the (frozen, cached) front-end runs; the
    #: others, at the top, are the model's to train. None (the default): all of them,
    #: the encoder's embedding (20 blocks for the speech embedding, 17 for the MSWC
    #: ResNet), filled in on construction, so ``to_dict()`` always holds the number.
    #: Other kinds ignore it (and store 20; ``fusion`` runs both encoders whole and
    #: accepts no other value).
    embedding_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        enc = ENCODERS.get(self.kind)
        if self.embedding_blocks is None:
            blocks = enc.num_blocks if enc is not None else _NO_ENCODER_BLOCKS
            object.__setattr__(self, "embedding_blocks", blocks)
        if isinstance(self.embedding_blocks, bool) or not isinstance(self.embedding_blocks, int):
            raise ValueError(f"embedding_blocks must be an integer, got {self.embedding_blocks!r}")
        if enc is not None:
            if self.sample_rate != enc.sample_rate:
                raise ValueError(f"kind={self.kind!r} works at sample_rate {enc.sample_rate} "
                                 f"only, got {self.sample_rate}")
            enc.check_blocks(self.embedding_blocks)
        elif self.kind == FUSION:
            if self.embedding_blocks != _NO_ENCODER_BLOCKS:
                raise ValueError(
                    f"kind='fusion' runs both encoders whole (frozen bases only): leave "
                    f"embedding_blocks unset, got {self.embedding_blocks}")
            if self.sample_rate != ENCODERS["mswc-resnet"].sample_rate:
                raise ValueError(f"kind='fusion' works at sample_rate 16000 only, got "
                                 f"{self.sample_rate}")
            if self.num_samples < _MSWC_WINDOW:
                raise ValueError(f"kind='fusion' needs clips of at least 1.5 s (the ResNet's "
                                 f"window), got duration {self.duration}")
        elif not 0 <= self.embedding_blocks <= _NO_ENCODER_BLOCKS:
            raise ValueError(f"embedding_blocks must be in 0..{_NO_ENCODER_BLOCKS}, got "
                             f"{self.embedding_blocks}")
        if self.mel_scale not in _SCALES:
            raise ValueError(f"mel_scale must be one of {_SCALES}, got {self.mel_scale!r}")
        if self.mel_norm not in _NORMS:
            raise ValueError(f"mel_norm must be one of {_NORMS}, got {self.mel_norm!r}")
        if self.sample_rate <= 0 or self.duration <= 0:
            raise ValueError("sample_rate and duration must be positive")
        if self.win_ms <= 0 or self.hop_ms <= 0:
            raise ValueError("win_ms and hop_ms must be positive")
        if self.n_mels <= 0:
            raise ValueError(f"n_mels must be positive, got {self.n_mels}")
        if self.kind == "mfcc" and not 0 < self.n_mfcc <= self.n_mels:
            raise ValueError(f"n_mfcc must be in 1..n_mels={self.n_mels}, got {self.n_mfcc}")
        if self.n_fft is not None and self.n_fft < self.win_length:
            raise ValueError(f"n_fft={self.n_fft} is shorter than the window ({self.win_length})")
        if not 0 <= self.f_min < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.fmax}"
            )
        if self.log_eps <= 0:
            raise ValueError(f"log_eps must be positive, got {self.log_eps}")

    @property
    def win_length(self) -> int:
        """Window length in samples (400 at the defaults)."""
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        """Hop in samples (160 at the defaults)."""
        return max(1, int(round(self.sample_rate * self.hop_ms / 1000.0)))

    @property
    def fft_size(self) -> int:
        """The FFT size actually used (``n_fft`` or the next power of two >= window)."""
        if self.n_fft is not None:
            return int(self.n_fft)
        return 1 << max(0, math.ceil(math.log2(self.win_length)))

    @property
    def n_freqs(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def fmax(self) -> float:
        """The upper band edge actually used."""
        return float(self.sample_rate / 2 if self.f_max is None else self.f_max)

    @property
    def num_samples(self) -> int:
        """Samples in a clip of ``duration`` seconds."""
        return int(round(self.duration * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Frames a clip of ``duration`` gives (101 at the defaults)."""
        return self.frames_for(self.num_samples)

    @property
    def num_features(self) -> int:
        """Feature bins per frame: ``n_mels`` for log-mel, ``n_mfcc`` for MFCC, the
        embedding's size for an encoder (96 for the speech embedding, 2048 for the MSWC
        ResNet; below its top: the size of one window's activations at the input of block
        ``embedding_blocks``); for ``fusion``, ``96 * W + 2048`` (:func:`fusion_layout`)."""
        if self.kind in ENCODERS:
            return ENCODERS[self.kind].features(self.embedding_blocks)
        if self.kind == FUSION:
            return fusion_layout(self.num_samples)[2]
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    def frames_for(self, num_samples: int) -> int:
        """Frames ``torch.stft`` gives for ``num_samples`` samples under this config (for an
        encoder: its windows, every 80 ms of the speech embedding, every 125 ms of the
        MSWC ResNet's 1.5 s; for ``fusion``: one, the whole clip)."""
        if self.kind in ENCODERS:
            return ENCODERS[self.kind].num_windows(num_samples)
        if self.kind == FUSION:
            return 1
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + max(0, num_samples - self.fft_size) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontendConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be ignored).
        Dicts stored before the second encoder (``embedding_blocks`` 20 whatever the kind)
        load as they were and give the same dict back."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown FrontendConfig keys: {unknown}")
        return cls(**d)


def hz_to_mel(hz: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    """Hz -> mel. ``htk``: 2595 log10(1 + f/700). ``slaney``: linear below 1 kHz, log above."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return torch.where(
        hz >= min_log_hz,
        min_log_mel + torch.log(torch.clamp(hz, min=min_log_hz) / min_log_hz) / logstep,
        hz / f_sp,
    )


def mel_to_hz(mel: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return torch.where(
        mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), mel * f_sp
    )


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    *,
    scale: str = "slaney",
    norm: str | None = "slaney",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular mel filters, shape ``[n_freqs, n_mels]`` (``power @ fb`` gives mel energy).

    Band edges are ``n_mels + 2`` points equally spaced on the mel scale between ``f_min``
    and ``f_max``. ``scale="slaney"`` (default) is the Auditory Toolbox scale (linear below
    1 kHz, logarithmic above) and ``norm="slaney"`` scales each triangle to unit area
    (2 / bandwidth), as librosa does by default; ``scale="htk"``, ``norm=None`` gives the HTK
    scale with peak-1 triangles (Kaldi/torchaudio style).
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), scale)
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), scale)
    widths = edges[1:] - edges[:-1]  # [n_mels + 1]
    dist = edges[:, None] - fft_hz[None, :]  # [n_mels + 2, n_freqs]: edge minus bin frequency
    rising = -dist[:-2] / widths[:-1, None]  # (f - left) / (centre - left)
    falling = dist[2:] / widths[1:, None]  # (right - f) / (right - centre)
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)  # [n_mels, n_freqs]
    if norm == "slaney":
        fb = fb * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.T.contiguous().to(dtype)


def dct_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II as a ``[n_in, n_out]`` matrix (``x @ D`` transforms the last axis)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    d = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    d[:, 0] = d[:, 0] / math.sqrt(2.0)
    return d.to(dtype)


def _resolve(config: FrontendConfig | None, overrides: dict[str, Any]) -> FrontendConfig:
    base = FrontendConfig() if config is None else config
    if overrides:
        d = base.to_dict()
        d.update(overrides)
        return FrontendConfig.from_dict(d)
    return base


class LogMel(nn.Module):
    """Log mel power spectrogram: ``[..., samples] -> [..., n_mels, frames]``."""

    def __init__(self, config: FrontendConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = _resolve(config, overrides)
        for name, value in self._constants().items():
            self.register_buffer(name, value.to(torch.float32))

    def _constants(self) -> dict[str, torch.Tensor]:
        """The fixed tensors, computed exactly in float64 from the config."""
        cfg = self.config
        fb = mel_filterbank(
            cfg.n_freqs, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.fmax,
            scale=cfg.mel_scale, norm=cfg.mel_norm, dtype=torch.float64,
        )  # fmt: skip
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
        return {"window": window, "mel_fb": fb}

    def _apply(self, fn: Any, recurse: bool = True) -> LogMel:
        # .to()/.double()/.cuda() move and cast the buffers; then rebuild them from the float64
        # originals, so that a float32 -> float64 round trip does not keep float32 rounding.
        super()._apply(fn, recurse)
        for name, exact in self._constants().items():
            buf = self._buffers.get(name)
            if buf is not None and buf.is_floating_point():
                self._buffers[name] = exact.to(device=buf.device, dtype=buf.dtype)
        return self

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Features of ``wave``; computed in the input's float dtype (float32 for others)."""
        cfg = self.config
        if wave.dim() == 0:
            raise ValueError("wave must have a samples axis, got a scalar")
        out_dtype = wave.dtype if wave.is_floating_point() else None
        dtype = wave.dtype if wave.dtype in (torch.float32, torch.float64) else torch.float32
        lead, n = wave.shape[:-1], wave.shape[-1]
        x = wave.reshape(-1, n).to(dtype)
        spec = torch.stft(
            x,
            n_fft=cfg.fft_size,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(dtype),
            center=cfg.center,
            pad_mode=cfg.pad_mode,
            return_complex=True,
        )  # [B, n_freqs, frames]
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(-1, -2), self.mel_fb.to(dtype)).transpose(-1, -2)
        feats = torch.log(mel + cfg.log_eps)
        feats = feats.reshape(*lead, cfg.n_mels, feats.shape[-1])
        return feats if out_dtype is None or out_dtype == dtype else feats.to(out_dtype)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, n_mels={c.n_mels}, win={c.win_length}, "
            f"hop={c.hop_length}, n_fft={c.fft_size}"
        )


class MFCC(LogMel):
    """MFCCs: orthonormal DCT-II of the log-mel, ``[..., samples] -> [..., n_mfcc, frames]``."""

    def __init__(self, config: FrontendConfig | None = None, **overrides: Any) -> None:
        cfg = _resolve(config, overrides)
        if not 0 < cfg.n_mfcc <= cfg.n_mels:
            raise ValueError(f"n_mfcc must be in 1..n_mels={cfg.n_mels}, got {cfg.n_mfcc}")
        super().__init__(cfg)

    def _constants(self) -> dict[str, torch.Tensor]:
        consts = super()._constants()
        consts["dct"] = dct_matrix(self.config.n_mels, self.config.n_mfcc, torch.float64)
        return consts

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logmel = super().forward(wave)  # [..., n_mels, frames]
        return torch.matmul(logmel.transpose(-1, -2), self.dct.to(logmel.dtype)).transpose(-1, -2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_mfcc={self.config.n_mfcc}"


class EmbeddingFeatures(nn.Module):
    """An encoder kind (:mod:`metavox.audio.encoders`): the frozen, pretrained encoder as
    a front-end, ``[B, samples]`` -> ``[B, F, windows]``, what the feature cache stores:

    - ``"speech-embedding"``: one 96-d vector every 80 ms; waveforms in [-1, 1]
      (``input_scale=1``): on the validation words of protocol 1 that gave 86.2 / 95.1 %
      (5-way 1 / 5-shot, cosine nearest centroid) against 82.8 / 93.6 % for the int16
      scale openWakeWord uses;
    - ``"mswc-resnet"``: one 2048-d unit vector per 1.5 s window, every 125 ms (a clip of
      at most 1.5 s: one window, zero-padded), the ResNet channels-last and batched.

    With ``embedding_blocks = s`` below the encoder's ``num_blocks`` it stops below block
    ``s`` and gives each window's activations there, flattened:
    ``[B, prod(block_shape(s)), windows]``.
    """

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        self.encoder = ENCODERS[config.kind]
        self.embedding = self.encoder.frontend(config.embedding_blocks)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        lead = wave.shape[:-1]
        out = self.embedding(wave.reshape(-1, wave.shape[-1])).flatten(2)  # [N, windows, F]
        return out.transpose(1, 2).reshape(*lead, out.shape[2], out.shape[1])


_MSWC_WINDOW = 24000  # samples of the ResNet's one window (1.5 s at 16 kHz)


def fusion_layout(num_samples: int) -> tuple[int, int, int]:
    """``(speech-embedding windows W, ResNet dimension, features)`` of the ``fusion``
    front-end on clips of ``num_samples``: each clip's one frame holds ``96 * W`` values of
    the speech embedding's windows (feature-major: value ``f * W + w`` is feature ``f`` of
    window ``w``), then the ResNet's 2048-d unit vector; ``features = 96 * W + 2048``
    (3584 for 2 s clips: 16 windows)."""
    se, rn = (ENCODERS[name] for name in FUSION_ENCODERS)
    windows = se.num_windows(num_samples)
    return windows, rn.dim, se.dim * windows + rn.dim


class FusionFeatures(nn.Module):
    """The ``fusion`` front-end: both pretrained encoders, whole and frozen, on each clip,
    ``[..., samples]`` -> ``[..., 96 * W + 2048, 1]`` (:func:`fusion_layout`), what the
    feature cache stores and what the ``fusion`` model reads.

    Each encoder sees the input it was built for. The speech embedding runs on the whole
    clip (models declare 2 s: 16 windows of 775 ms every 80 ms, kept, so the model pools
    them as the ``speech-embedding`` model does). The ResNet was trained on 1.5 s words:
    it runs once, on the clip's centred 1.5 s. Clips are centred in their 2 s when loaded,
    so that is the word as the ``mswc-resnet`` front-end sees it (one 1.5 s window around
    the clip), bit for bit when the padding is even; sliding 1.5 s windows every 125 ms
    (five for 2 s) would cost five ResNet passes for windows that mostly hold silence.
    The two embeddings go into one frame (not a vector per speech-embedding window with
    the ResNet's repeated: 16 copies of 2048 values) because the feature cache stores one
    ``[features, frames]`` array per clip.
    """

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        if config.kind != FUSION:
            raise ValueError(f"FusionFeatures needs kind='fusion', got {config.kind!r}")
        self.config = config
        self.speech = ENCODERS["speech-embedding"].frontend(
            ENCODERS["speech-embedding"].num_blocks)
        self.resnet = ENCODERS["mswc-resnet"].frontend(ENCODERS["mswc-resnet"].num_blocks)

    def forward(self, wave: Tensor) -> Tensor:
        lead, n = wave.shape[:-1], wave.shape[-1]
        if n < _MSWC_WINDOW:
            raise ValueError(f"the fusion front-end needs at least {_MSWC_WINDOW} samples "
                             f"(1.5 s), got {n}")
        x = wave.reshape(-1, n)
        speech = self.speech(x).transpose(1, 2).flatten(1)  # [N, 96 * W], feature-major
        start = (n - _MSWC_WINDOW) // 2
        resnet = self.resnet(x[:, start:start + _MSWC_WINDOW])[:, 0]  # [N, 2048]
        out = torch.cat([speech, resnet], dim=1)
        return out.reshape(*lead, out.shape[-1], 1)


@functools.lru_cache(maxsize=8)
def shared_frontend(config: FrontendConfig) -> nn.Module:
    """The eval-mode front-end for ``config``, built once per process and then shared:
    for featurizing at inference (enrollment, classification, the service), where building
    the speech embedding each call would read and check its weights every time. Callers
    must not train or modify it; running it from several threads at once is fine."""
    return build_frontend(config).eval().requires_grad_(False)


def build_frontend(config: FrontendConfig | None = None) -> nn.Module:
    """The feature module ``config.kind`` names: :class:`LogMel`, :class:`MFCC`, for
    an encoder :class:`EmbeddingFeatures`, for both :class:`FusionFeatures`."""
    cfg = FrontendConfig() if config is None else config
    if cfg.kind == FUSION:
        return FusionFeatures(cfg)
    if cfg.kind in ENCODERS:
        return EmbeddingFeatures(cfg)
    return MFCC(cfg) if cfg.kind == "mfcc" else LogMel(cfg)
