"""metavox's pretrained encoders, in one place.

An encoder is a pretrained network ported to native PyTorch (its ONNX weights read,
checked and cached through :mod:`metavox.audio.onnx_port`) and cut into blocks, so that
the lower blocks run once, frozen, as a front-end whose output the feature cache stores,
and the top blocks can belong to a model that trains them. Each one is described here by
an :class:`Encoder`; everything else reaches the encoders through this table:

- :class:`metavox.audio.features.FrontendConfig` takes an encoder's name as its ``kind``,
  with ``embedding_blocks`` = the blocks the front-end runs (the encoder's
  ``num_blocks``, all of them, unless set);
- :func:`metavox.audio.features.build_frontend` builds :meth:`Encoder.frontend`;
- the model of the same name (:mod:`metavox.models.embedding`) holds the top
  ``trainable_blocks`` (:meth:`Encoder.top`, pretrained) and declares its front-end to
  the model registry through :meth:`Encoder.declared_frontend`.

The encoders:

- ``speech-embedding``: Google's speech embedding (:mod:`metavox.audio.speech_embedding`),
  trained on English keywords; 20 convolutions; one 96-d vector per 775 ms window, every
  80 ms; models declare 2 s clips (16 windows);
- ``mswc-resnet``: EfficientWord-Net's ResNet-50 (:mod:`metavox.audio.mswc_resnet`),
  trained with an ArcFace loss on words of the Multilingual Spoken Words Corpus; a stem
  and 16 bottlenecks; one 2048-d unit vector per 1.5 s window, every 125 ms; models
  declare 1.5 s clips (one window).

A next encoder is one module with the same pieces (a sliceable body with full-model
parameter names, ``block_shape``, ``body_state``, ``pretrained_state``, a frozen front-end
module giving ``[B, windows, *block_shape(blocks)]``) and one entry in :data:`ENCODERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from metavox.audio import mswc_resnet, speech_embedding

__all__ = ["ENCODERS", "Encoder", "encoder"]


@dataclass(frozen=True)
class Encoder:
    """One pretrained encoder: its shapes, its pieces, and the front-end its models need."""

    name: str  #: the front-end kind and the model's registry name
    description: str
    num_blocks: int  #: blocks of the body (the front-end runs ``embedding_blocks`` of them)
    dim: int  #: size of the embedding (the output of the last block)
    sample_rate: int
    clip_seconds: float  #: the clip length the encoder's models declare
    #: activation shape of one window at the input of block ``i`` (``num_blocks``: the output)
    block_shape: Callable[[int], tuple[int, ...]]
    #: windows a clip of ``n`` samples gives (the front-end's frames)
    num_windows: Callable[[int], int]
    #: ``(start, stop)`` -> the body's blocks ``start..stop-1``, untrained
    body: Callable[[int, int], nn.Module]
    #: ``(pretrained state, slice)`` -> the entries the slice holds, named as in it
    body_state: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
    pretrained_state: Callable[[], dict[str, Tensor]]
    #: ``blocks`` -> the frozen front-end, ``[B, samples]`` -> ``[B, windows, *block_shape]``
    frozen: Callable[[int], nn.Module]

    def features(self, blocks: int) -> int:
        """Values per window the front-end running ``blocks`` blocks gives."""
        return math.prod(self.block_shape(blocks))

    def check_blocks(self, blocks: int, what: str = "embedding_blocks") -> None:
        """A ``ValueError`` unless ``0 <= blocks <= num_blocks``."""
        if not 0 <= blocks <= self.num_blocks:
            raise ValueError(f"{what} must be in 0..{self.num_blocks} for {self.name!r}, "
                             f"got {blocks}")

    def top(self, trainable_blocks: int) -> nn.Module:
        """The top ``trainable_blocks`` blocks, with the pretrained weights."""
        self.check_blocks(trainable_blocks, "trainable_blocks")
        top = self.body(self.num_blocks - trainable_blocks, self.num_blocks)
        top.load_state_dict(self.body_state(self.pretrained_state(), top))
        return top

    def frontend(self, blocks: int) -> nn.Module:
        """The frozen front-end running the lower ``blocks`` blocks (all: the embedding)."""
        self.check_blocks(blocks)
        return self.frozen(blocks)

    def declared_frontend(self, options: dict[str, Any]) -> dict[str, Any]:
        """The ``FrontendConfig`` fields the encoder's model with ``options`` needs: the
        encoder's sample rate and clip length, its front-end stopping below the
        ``trainable_blocks`` the model trains."""
        k = int(options.get("trainable_blocks", 0))
        return {"kind": self.name, "duration": self.clip_seconds,
                "sample_rate": self.sample_rate, "embedding_blocks": self.num_blocks - k}


def _speech_embedding_frozen(blocks: int) -> nn.Module:
    # [-1, 1] input: on protocol 1's validation words 86.2 / 95.1 % (5-way 1 / 5-shot,
    # cosine nearest centroid) against 82.8 / 93.6 % for openWakeWord's int16 scale
    return speech_embedding.SpeechEmbedding(input_scale=1.0, blocks=blocks)


def _mswc_frozen(blocks: int) -> nn.Module:
    # [-1, 1] input, as EfficientWord-Net feeds the words it enrolls
    return mswc_resnet.MswcResNetWindows(input_scale=1.0, blocks=blocks)


ENCODERS: dict[str, Encoder] = {
    "speech-embedding": Encoder(
        name="speech-embedding",
        description="Google's speech embedding (English keywords; needs metavox[pretrained])",
        num_blocks=speech_embedding.NUM_BLOCKS,
        dim=speech_embedding.EMBEDDING_DIM,
        sample_rate=speech_embedding.SAMPLE_RATE,
        clip_seconds=2.0,  # 16 windows of 775 ms, every 80 ms
        block_shape=speech_embedding.block_shape,
        num_windows=speech_embedding.num_windows,
        body=speech_embedding.SpeechEmbeddingBody,
        body_state=speech_embedding.body_state,
        pretrained_state=speech_embedding.pretrained_state,
        frozen=_speech_embedding_frozen,
    ),
    "mswc-resnet": Encoder(
        name="mswc-resnet",
        description="EfficientWord-Net's ResNet-50 (ArcFace on MSWC words; needs "
                    f"`{mswc_resnet.INSTALL}`)",
        num_blocks=mswc_resnet.NUM_BLOCKS,
        dim=mswc_resnet.EMBEDDING_DIM,
        sample_rate=mswc_resnet.SAMPLE_RATE,
        clip_seconds=mswc_resnet.WINDOW_SECONDS,  # one window
        block_shape=mswc_resnet.block_shape,
        num_windows=mswc_resnet.num_windows,
        body=mswc_resnet.MswcResNetBody,
        body_state=mswc_resnet.body_state,
        pretrained_state=mswc_resnet.pretrained_state,
        frozen=_mswc_frozen,
    ),
}


def encoder(name: str) -> Encoder:
    """The encoder ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}") from None
