"""EfficientWord-Net's ResNet-50 word embedding, ported to native PyTorch.

The model (Apache-2.0, Copyright 2021 ANT-BRaiN; https://github.com/Ant-Brain/EfficientWord)
is the pretrained encoder of the few-shot hotword engine EfficientWord-Net: a
channel-pruned ("slim") ResNet-50, bottleneck widths 61/122/243/486 instead of
64/128/256/512, 21.9M parameters, trained from scratch with an ArcFace (additive angular
margin) loss to tell spoken words apart. Its README says it was trained on "a modified
distilled dataset" from MLCommons' Multilingual Spoken Words Corpus (MSWC: 340k keywords,
23.4M one-second examples, 50 languages, from Common Voice; CC-BY 4.0); which languages
and words it kept is not published. Everyday English words are in MSWC, so **its training
words may include a benchmark's test words** (Speech Commands' "yes", "bird", ...):
few-shot scores measured on top of it are not scores on unseen words.

It ships as an ONNX file in the ``efficientword-net`` wheel (install it without its
dependencies, which include PyAudio: ``pip install --no-deps efficientword-net==1.0.5``).
metavox finds the file without importing the package, reads the weights with ``onnx``
(never runs the graph), checks that the graph is the one this module reproduces, and
rebuilds the network from ``nn.Conv2d`` layers (the exported graph already folded each
batch norm into its convolution), so ``torch.func``, second-order gradients, batches and
CUDA work through it. The converted weights are cached as safetensors under metavox's
cache folder, keyed by the file's sha256.

The pieces, for one 1.5 s window at 16 kHz (24000 samples):

- :class:`MswcFilterbank`, its front-end (``logfbank`` of ``python_speech_features`` with
  EfficientWord-Net's settings): rectangular 400-sample frames (25 ms) every 160 samples
  (10 ms), the last one zero-padded, no pre-emphasis, no dither; power spectrum
  ``|rfft(frame, 512)|² / 512``; 64 triangular mel filters on FFT bins over 0-8 kHz;
  exact zeros replaced by float64 epsilon (2.2e-16); natural log -> ``[B, 149, 64]``;
- :class:`MswcResNetBody`, the graph: each window's feature map min-max scaled to [-1, 1]
  (over all 149 x 64 values), a one-channel batch norm, the ResNet-50 (7x7 stem, max pool,
  3+4+6+3 bottlenecks), global average pool, a batch norm over the 2048 channels, L2
  normalisation -> ``[B, 2048]`` unit vectors, compared by cosine.

Audio scale: EfficientWord-Net feeds [-1, 1] floats when it enrolls words (soundfile) but
int16-valued samples from the microphone; :class:`MswcFilterbank` multiplies by
``input_scale`` (1.0 by default; 32768 for the microphone's scale). The log turns the
scale into a constant offset that the min-max scaling removes, except in frames of
digital silence, where the epsilon floor does not move.

Where the ONNX graph gives NaN (a window whose feature map is constant, e.g. 1.5 s of
digital zeros) the port scales by 1 instead of dividing by zero.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.audio.onnx_port import (
    EmbeddingError,
    cached_conversion,
    initializers,
    load_graph,
    node_attributes,
    package_file,
)

__all__ = [
    "EmbeddingError",
    "MswcFilterbank",
    "MswcResNetBody",
    "MswcResNet",
    "MswcResNetWindows",
    "block_shape",
    "body_state",
    "check_graph",
    "convert_onnx",
    "num_frames",
    "num_windows",
    "onnx_file",
    "pretrained_state",
    "sliding_windows",
]

SAMPLE_RATE = 16000
WINDOW_SECONDS = 1.5
WINDOW_SAMPLES = 24000  # the model's input: one 1.5 s window
FRAME_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512
N_BANDS = 64
WINDOW_FRAMES = 149  # frames of one window
EMBEDDING_DIM = 2048
DEFAULT_HOP = 2000  # samples between windows of a longer clip (EfficientWord-Net's 1/8 s)
EPS_FLOOR = float(np.finfo(np.float64).eps)  # what the front-end puts in place of a zero
BN_EPS = 1e-5

PACKAGE = "eff_word_net"
ONNX_PATH = "models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx"
INSTALL = "pip install --no-deps efficientword-net==1.0.5"
CACHE_NAME = "mswc-resnet50"

#: The stem: (out channels, kernel, stride, padding), then the max pool (kernel, stride,
#: padding). Checked against the ONNX graph.
STEM = (61, 7, 2, 3)
STEM_POOL = (3, 2, 1)
#: The four stages of bottlenecks: (width, out channels, blocks, stride of the first).
STAGES = ((61, 256, 3, 1), (122, 512, 4, 2), (243, 1024, 6, 2), (486, 2048, 3, 2))
#: Blocks of the body: 0 is the stem (input scaling, 7x7 convolution, pool), 1..16 the
#: bottlenecks; the head (pool, batch norm, L2 normalisation) follows the last one.
NUM_BLOCKS = 1 + sum(n for _, _, n, _ in STAGES)


def bottlenecks() -> Iterator[tuple[int, int, int, int, bool]]:
    """Per bottleneck, in order: ``(in channels, width, out channels, stride, downsample)``."""
    channels = STEM[0]
    for width, out, count, stride in STAGES:
        for b in range(count):
            first = b == 0
            yield channels, width, out, stride if first else 1, first
            channels = out


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def block_shape(index: int, frames: int = WINDOW_FRAMES) -> tuple[int, ...]:
    """The activation shape of one window at the input of block ``index``:
    ``(1, 149, 64)`` (the log filterbank) at 0, ``(61, 38, 16)`` at 1 (after the stem),
    ``(256, 38, 16)`` at 2, ..., ``(1024, 10, 4)`` at 14, ``(2048, 5, 2)`` at 15 and 16, and
    ``(2048,)`` (the embedding) at 17; ``frames`` for windows of another length."""
    if not 0 <= index <= NUM_BLOCKS:
        raise ValueError(f"block index must be in 0..{NUM_BLOCKS}, got {index}")
    if index == NUM_BLOCKS:
        return (EMBEDDING_DIM,)
    c, h, w = 1, frames, N_BANDS
    if index == 0:
        return c, h, w
    out, k, s, p = STEM
    c, h, w = out, _conv_out(h, k, s, p), _conv_out(w, k, s, p)
    k, s, p = STEM_POOL
    h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
    for _, _, out, stride, _ in list(bottlenecks())[: index - 1]:
        c, h, w = out, _conv_out(h, 3, stride, 1), _conv_out(w, 3, stride, 1)
    return c, h, w


# -- front-end --------------------------------------------------------------------------------


def num_frames(num_samples: int) -> int:
    """Frames the front-end gives for ``num_samples`` samples (149 for 1.5 s): one if the
    clip is at most one frame long, else enough 160-sample steps to cover the clip, the
    last frame zero-padded."""
    if num_samples <= FRAME_SAMPLES:
        return 1
    return 1 + -(-(num_samples - FRAME_SAMPLES) // HOP_SAMPLES)


def mel_filterbank(num_bands: int = N_BANDS, fft_size: int = FFT_SIZE,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[fft_size // 2 + 1, num_bands]`` triangular filters (float64): band edges evenly
    spaced on the mel scale ``2595 log10(1 + f / 700)`` from 0 Hz to Nyquist, each snapped
    down to an FFT bin by ``floor((fft_size + 1) f / sample_rate)``; filter ``j`` rises
    linearly from 0 at edge ``j`` to 1 at edge ``j + 1`` and falls to 0 at edge ``j + 2``
    (the right edge itself excluded)."""
    top = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    hz = 700.0 * (10.0 ** (np.linspace(0.0, top, num_bands + 2) / 2595.0) - 1.0)
    edge = np.floor((fft_size + 1) * hz / sample_rate)
    k = np.arange(fft_size // 2 + 1, dtype=np.float64)[:, None]
    lo, mid, hi = edge[None, :-2], edge[None, 1:-1], edge[None, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where((k >= lo) & (k < mid), (k - lo) / (mid - lo), 0.0)
        fall = np.where((k >= mid) & (k < hi), (hi - k) / (hi - mid), 0.0)
    return rise + fall


class MswcFilterbank(nn.Module):
    """EfficientWord-Net's front-end: ``[B, samples]`` at 16 kHz in [-1, 1] ->
    ``[B, num_frames(samples), 64]`` natural-log mel filterbank energies (149 frames for
    1.5 s; see the module doc for the steps).

    Half-precision input is computed in float32 (the epsilon floor needs its range) and the
    result cast back.
    """

    def __init__(self, input_scale: float = 1.0) -> None:
        super().__init__()
        self.input_scale = float(input_scale)
        self.register_buffer("filterbank", torch.from_numpy(mel_filterbank()).float(),
                             persistent=False)

    def power(self, wave: Tensor) -> Tensor:
        """``[B, samples]`` -> ``[B, frames, 257]``: each frame's ``|rfft|² / 512``."""
        n = wave.shape[-1]
        pad = (num_frames(n) - 1) * HOP_SAMPLES + FRAME_SAMPLES - n
        frames = F.pad(wave * self.input_scale, (0, pad)).unfold(-1, FRAME_SAMPLES, HOP_SAMPLES)
        spec = torch.fft.rfft(frames, n=FFT_SIZE)
        return (spec.real.square() + spec.imag.square()) / FFT_SIZE

    def forward(self, wave: Tensor) -> Tensor:
        dtype = wave.dtype
        if dtype in (torch.float16, torch.bfloat16):
            wave = wave.float()
        energy = self.power(wave) @ self.filterbank.to(wave.dtype)
        energy = torch.where(energy == 0, torch.full_like(energy, EPS_FLOOR), energy)
        return energy.log().to(dtype)


# -- body -------------------------------------------------------------------------------------


class Stem(nn.Module):
    """Block 0: the window's min-max scaling to [-1, 1], the one-channel batch norm (fixed
    statistics: buffers), the 7x7 stride-2 convolution, ReLU and the 3x3 stride-2 max pool:
    ``[B, 1, frames, 64]`` -> ``[B, 61, ., 16]``."""

    def __init__(self) -> None:
        super().__init__()
        out, k, s, p = STEM
        self.conv = nn.Conv2d(1, out, k, stride=s, padding=p)
        for name in ("weight", "bias", "mean", "var"):
            self.register_buffer(f"input_{name}", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1, 1)
        span = flat.amax(1).view(-1, 1, 1, 1) - lo
        span = torch.where(span > 0, span, torch.ones_like(span))  # the ONNX gives NaN
        x = (x - lo) / span * 2.0 - 1.0
        x = (x - self.input_mean) / torch.sqrt(self.input_var + BN_EPS)
        x = x * self.input_weight + self.input_bias
        k, s, p = STEM_POOL
        return F.max_pool2d(F.relu(self.conv(x)), k, s, p)


class Bottleneck(nn.Module):
    """ResNet's bottleneck, batch norms folded into the convolutions: 1x1, 3x3 (strided),
    1x1, plus the input (through a strided 1x1 ``downsample`` in each stage's first)."""

    def __init__(self, channels: int, width: int, out: int, stride: int,
                 downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(width, out, 1)
        self.downsample = nn.Conv2d(channels, out, 1, stride=stride) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Head(nn.Module):
    """Global average pool, batch norm over the 2048 channels (fixed statistics; its scale
    and shift are parameters) and L2 normalisation: ``[B, 2048, h, w]`` -> ``[B, 2048]``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(EMBEDDING_DIM))
        self.bias = nn.Parameter(torch.zeros(EMBEDDING_DIM))
        self.register_buffer("running_mean", torch.zeros(EMBEDDING_DIM))
        self.register_buffer("running_var", torch.ones(EMBEDDING_DIM))

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean(dim=(2, 3))
        x = (x - self.running_mean) / torch.sqrt(self.running_var + BN_EPS)
        return F.normalize(x * self.weight + self.bias, dim=1, eps=1e-12)


class MswcResNetBody(nn.Module):
    """Blocks ``start..stop-1`` of the body (all of them by default: ``[B, 1, 149, 64]``
    log filterbanks -> ``[B, 2048]`` unit vectors); the head comes with the last block.

    A slice lets the lower part run once as a frozen, cached front-end
    (``MswcResNetBody(0, s)``: ``[B, *block_shape(s)]``) and the top be trained
    (``MswcResNetBody(s)``). Parameter names are the full body's (``blocks.16.conv2.weight``,
    ``head.weight``) in every slice, so the pretrained state loads into any slice through
    :func:`body_state`. The body has no batch-norm modules (the graph's are folded or have
    fixed statistics), so train and eval mode compute the same.
    """

    def __init__(self, start: int = 0, stop: int = NUM_BLOCKS) -> None:
        super().__init__()
        if not 0 <= start <= stop <= NUM_BLOCKS:
            raise ValueError(f"need 0 <= start <= stop <= {NUM_BLOCKS}, got {start}, {stop}")
        self.start, self.stop = start, stop
        self.blocks = nn.ModuleDict()
        specs = list(bottlenecks())
        for i in range(start, stop):
            self.blocks[str(i)] = Stem() if i == 0 else Bottleneck(*specs[i - 1])
        self.head = Head() if stop == NUM_BLOCKS else None

    def forward(self, x: Tensor) -> Tensor:
        """``[B, *block_shape(start)]`` -> ``[B, *block_shape(stop)]``."""
        for block in self.blocks.values():
            x = block(x)
        return x if self.head is None else self.head(x)


def body_state(state: dict[str, Tensor], body: MswcResNetBody) -> dict[str, Tensor]:
    """The entries of the pretrained ``state`` that ``body``'s slice holds."""
    def held(key: str) -> bool:
        if key.startswith("head."):
            return body.head is not None
        return body.start <= int(key.split(".")[1]) < body.stop

    return {k: v for k, v in state.items() if held(k)}


# -- the ONNX graph ---------------------------------------------------------------------------


def onnx_file() -> Path:
    """The ONNX file of the installed ``efficientword-net`` (found, not imported)."""
    return package_file(PACKAGE, ONNX_PATH, INSTALL)


class _Walk:
    """Reads an ONNX graph node by node against the expected sequence; any difference is an
    :class:`EmbeddingError` naming the node and what differs."""

    def __init__(self, graph: Any, weights: dict[str, Tensor], where: str) -> None:
        self.nodes, self.weights, self.where, self.i = list(graph.node), weights, where, 0

    def fail(self, what: str) -> EmbeddingError:
        return EmbeddingError(f"{self.where}: {what}; not the EfficientWord-Net ResNet-50 graph "
                              f"this port reproduces (efficientword-net 1.0.5)")

    def take(self, op: str, *inputs: str | None, **attrs: Any) -> Any:
        """The next node, which must be ``op`` reading ``inputs`` (None: any) and carrying
        ``attrs`` (floats compared to 1e-6 relative)."""
        if self.i >= len(self.nodes):
            raise self.fail(f"the graph ends where a {op} was expected")
        node, label = self.nodes[self.i], f"node {self.i} ({self.nodes[self.i].name!r})"
        if node.op_type != op:
            raise self.fail(f"{label} is a {node.op_type}, expected a {op}")
        for k, want in enumerate(inputs):
            if want is not None and (len(node.input) <= k or node.input[k] != want):
                got = node.input[k] if len(node.input) > k else "nothing"
                raise self.fail(f"{label} input {k} is {got!r}, expected {want!r}")
        have = node_attributes(node)
        for name, want in attrs.items():
            got = have.get(name)
            same = (got is not None and math.isclose(got, want, rel_tol=1e-6)
                    if isinstance(want, float) else got == want)
            if not same:
                raise self.fail(f"{label} has {name}={got}, expected {want}")
        self.i += 1
        return node

    def const(self, node: Any, k: int, want: list[float] | None = None,
              shape: tuple[int, ...] | None = None) -> Tensor:
        """Input ``k`` of ``node``, an initializer, checked for its values or shape."""
        name = node.input[k] if len(node.input) > k else ""
        if name not in self.weights:
            raise self.fail(f"{node.op_type} {node.name!r} input {k} is not a stored constant")
        value = self.weights[name]
        if want is not None and (value.numel() != len(want) or not torch.allclose(
                value.double().flatten(), torch.tensor(want, dtype=torch.float64))):
            raise self.fail(f"{node.op_type} {node.name!r} has the constant "
                            f"{value.flatten().tolist()}, expected {want}")
        if shape is not None and tuple(value.shape) != shape:
            raise self.fail(f"{node.op_type} {node.name!r} input {k} has shape "
                            f"{tuple(value.shape)}, expected {shape}")
        return value

    def conv(self, x: str, out: int, channels: int, kernel: int, stride: int, pad: int,
             state: dict[str, Tensor], prefix: str) -> str:
        node = self.take("Conv", x, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad] * 4, group=1, dilations=[1, 1])
        state[f"{prefix}.weight"] = self.const(node, 1, shape=(out, channels, kernel, kernel))
        state[f"{prefix}.bias"] = self.const(node, 2, shape=(out,))
        return node.output[0]

    def batch_norm(self, x: str, channels: int, state: dict[str, Tensor],
                   names: list[str]) -> str:
        node = self.take("BatchNormalization", x, epsilon=BN_EPS)
        for k, name in enumerate(names, start=1):
            state[name] = self.const(node, k, shape=(channels,))
        return node.output[0]


def check_graph(graph: Any, weights: dict[str, Tensor] | None = None,
                where: str = "the ONNX graph") -> dict[str, Tensor]:
    """Check an ``onnx.GraphProto`` against the structure :class:`MswcResNetBody`
    reproduces (every node in order, with its wiring, attributes, constants and weight
    shapes) and return the body's state dict read from it (``weights``: the graph's
    initializers as tensors, read from ``graph`` when not given). Raises
    :class:`EmbeddingError` naming the first node that differs."""
    weights = initializers(graph) if weights is None else weights
    walk, state = _Walk(graph, weights, where), {}
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input]
    if len(dims) != 1 or dims[0][1:] != [1, WINDOW_FRAMES, N_BANDS]:
        raise walk.fail(f"its inputs have shapes {dims}, expected one [1, 1, 149, 64]")
    x = graph.input[0].name
    # the window's min-max scaling to [-1, 1]
    flat = walk.take("Reshape", x)
    walk.const(flat, 1, [1, -1])
    flat = flat.output[0]
    lo = walk.take("ReduceMin", flat, axes=[1], keepdims=0).output[0]
    lo = walk.take("Reshape", lo).output[0]
    hi = walk.take("ReduceMax", flat, axes=[1], keepdims=0).output[0]
    hi = walk.take("Reshape", hi).output[0]
    shifted = walk.take("Sub", flat, lo).output[0]
    span = walk.take("Sub", hi, lo).output[0]
    scaled = walk.take("Div", shifted, span).output[0]
    node = walk.take("Mul", scaled)
    walk.const(node, 1, [2.0])
    node = walk.take("Sub", node.output[0])
    walk.const(node, 1, [1.0])
    node = walk.take("Reshape", node.output[0])
    walk.const(node, 1, [1, 1, WINDOW_FRAMES, N_BANDS])
    x = walk.batch_norm(node.output[0], 1, state,
                        [f"blocks.0.input_{n}" for n in ("weight", "bias", "mean", "var")])
    # the stem
    out, k, s, p = STEM
    x = walk.conv(x, out, 1, k, s, p, state, "blocks.0.conv")
    x = walk.take("Relu", x).output[0]
    k, s, p = STEM_POOL
    x = walk.take("MaxPool", x, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
                  ceil_mode=0).output[0]
    # the bottlenecks
    for i, (channels, width, out, stride, down) in enumerate(bottlenecks(), start=1):
        pre = f"blocks.{i}"
        y = walk.conv(x, width, channels, 1, 1, 0, state, f"{pre}.conv1")
        y = walk.take("Relu", y).output[0]
        y = walk.conv(y, width, width, 3, stride, 1, state, f"{pre}.conv2")
        y = walk.take("Relu", y).output[0]
        y = walk.conv(y, out, width, 1, 1, 0, state, f"{pre}.conv3")
        short = walk.conv(x, out, channels, 1, stride, 0, state, f"{pre}.downsample") \
            if down else x
        y = walk.take("Add", y, short).output[0]
        x = walk.take("Relu", y).output[0]
    # the head
    x = walk.take("GlobalAveragePool", x).output[0]
    x = walk.take("Flatten", x, axis=1).output[0]
    emb = walk.batch_norm(x, EMBEDDING_DIM, state, [
        f"head.{n}" for n in ("weight", "bias", "running_mean", "running_var")])
    node = walk.take("Abs", emb)
    node = walk.take("Pow", node.output[0])
    walk.const(node, 1, [2.0])
    node = walk.take("ReduceSum", node.output[0], keepdims=1)
    walk.const(node, 1, [1])
    node = walk.take("Pow", node.output[0])
    walk.const(node, 1, [0.5])
    node = walk.take("Clip", node.output[0])
    walk.const(node, 1, [1e-12])
    node = walk.take("Expand", node.output[0])
    node = walk.take("Div", emb, node.output[0])
    if walk.i != len(walk.nodes) or [o.name for o in graph.output] != [node.output[0]]:
        raise walk.fail(f"{len(walk.nodes) - walk.i} nodes follow the L2 normalisation, or "
                        f"the output is not its result")
    return state


def convert_onnx(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict of :class:`MswcResNetBody` read from the ONNX file at ``path``, after
    :func:`check_graph`."""
    graph, weights = load_graph(path)
    return check_graph(graph, weights, str(path))


def pretrained_state(cache: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The converted weights, from the cache (``<cache root>/mswc-resnet50/<key>.safetensors``,
    or ``<cache>/<key>.safetensors``) or converted from the installed ONNX file and cached."""
    path = onnx_file()
    return cached_conversion(CACHE_NAME, [path], lambda: convert_onnx(path), cache=cache)


# -- the whole model --------------------------------------------------------------------------


def num_windows(num_samples: int, hop: int = DEFAULT_HOP) -> int:
    """1.5 s windows :func:`sliding_windows` cuts from ``num_samples`` samples (one for a
    clip of at most 1.5 s, which is zero-padded)."""
    return 1 + max(0, num_samples - WINDOW_SAMPLES) // hop


def sliding_windows(wave: Tensor, hop: int = DEFAULT_HOP) -> Tensor:
    """``[B, samples]`` -> ``[B, num_windows(samples, hop), 24000]``: the 1.5 s windows
    starting every ``hop`` samples that fit in the clip (a shorter clip is zero-padded at
    the end to one window)."""
    if hop < 1:
        raise ValueError(f"hop must be at least one sample, got {hop}")
    if wave.shape[-1] < WINDOW_SAMPLES:
        wave = F.pad(wave, (0, WINDOW_SAMPLES - wave.shape[-1]))
    return wave.unfold(-1, WINDOW_SAMPLES, hop)


class MswcResNet(nn.Module):
    """Front-end plus body, pretrained: ``[B, 24000]`` (1.5 s at 16 kHz in [-1, 1]) ->
    ``[B, 2048]`` unit vectors.

    ``blocks=s < 17`` stops below block ``s``: ``[B, *block_shape(s)]``, the input of the
    top ``17 - s`` blocks a model trains. Other clip lengths run too (the pooling is
    global) but the model was trained on 1.5 s windows; :meth:`embed_windows` cuts longer
    clips into them.

    ``channels_last=True`` stores the body's convolution weights channels-last and feeds
    it channels-last feature maps (the output comes back in the default layout): the
    same values, 20-30% faster on one CPU core. The frozen front-end
    (:class:`MswcResNetWindows`) runs so.
    """

    def __init__(self, *, input_scale: float = 1.0, pretrained: bool = True,
                 cache: str | os.PathLike[str] | None = None, blocks: int = NUM_BLOCKS,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.features = MswcFilterbank(input_scale)
        self.body = MswcResNetBody(0, blocks)
        if pretrained:
            self.body.load_state_dict(body_state(pretrained_state(cache), self.body))
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.body.to(memory_format=torch.channels_last)

    def forward(self, wave: Tensor) -> Tensor:
        x = self.features(wave).unsqueeze(1)
        if not self.channels_last:
            return self.body(x)
        return self.body(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def embed_windows(self, wave: Tensor, hop: int = DEFAULT_HOP, batch: int = 32) -> Tensor:
        """``[B, samples]`` -> ``[B, num_windows(samples, hop), 2048]`` (or the block shape
        where ``blocks < 17``): every 1.5 s window at ``hop`` samples, run ``batch`` windows
        at a time."""
        windows = sliding_windows(wave, hop)
        flat = windows.reshape(-1, WINDOW_SAMPLES)
        if torch.onnx.is_in_onnx_export():  # one batch: a loop would fix the batch size
            out = self(flat)
        else:
            out = torch.cat([self(flat[i:i + batch]) for i in range(0, flat.shape[0], batch)])
        return out.reshape(*windows.shape[:2], *out.shape[1:])


class MswcResNetWindows(nn.Module):
    """The frozen ResNet as a front-end: ``[B, samples]`` ->
    ``[B, num_windows(samples, hop), *block_shape(blocks)]``, every 1.5 s window of each
    clip (one, zero-padded, for a clip of at most 1.5 s) through :class:`MswcResNet`,
    channels-last, ``batch`` windows at a time. ``blocks = 17``: the 2048-d unit vectors.
    """

    def __init__(self, *, input_scale: float = 1.0, blocks: int = NUM_BLOCKS,
                 hop: int = DEFAULT_HOP, batch: int = 64, pretrained: bool = True,
                 cache: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.model = MswcResNet(input_scale=input_scale, pretrained=pretrained, cache=cache,
                                blocks=blocks, channels_last=True)
        self.hop, self.batch = int(hop), int(batch)

    def forward(self, wave: Tensor) -> Tensor:
        return self.model.embed_windows(wave, self.hop, self.batch)

