"""Word-level decisions: cut a recording into speech segments by energy, and score one
window per segment, centred on it as an enrollment clip is centred in its window.

The sliding window of :mod:`metavox.kws.spotter` scores every hop, so a non-target word is
scored in some 25 windows at every alignment (parts of it, it with its neighbours) and
the best of those decides; a segment is scored once, in the position the model saw its
enrollment clips in. This is the offline form the stream protocol measures
(``metavox streams --decision segments``): the noise floor is a low percentile of the
whole recording's frame energies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metavox.audio.features import FrontendConfig
from metavox.audio.io import frame_rms


def speech_segments(wave: np.ndarray, sample_rate: int, *, frame_ms: float = 20.0,
                    floor_percentile: float = 20.0, above_db: float = 8.0,
                    bridge_ms: float = 150.0, min_ms: float = 120.0
                    ) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of the stretches whose frame energy is ``above_db`` over the
    noise floor (the ``floor_percentile`` of all frames' energies), with gaps shorter
    than ``bridge_ms`` bridged and stretches shorter than ``min_ms`` dropped."""
    if len(wave) == 0:
        return []
    rms, n, _ = frame_rms(wave, sample_rate, frame_ms=frame_ms)
    db = 20 * np.log10(rms + 1e-6)
    loud = db > np.percentile(db, floor_percentile) + above_db
    spans, start = [], None
    for i, on in enumerate(loud.tolist() + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append([start, i])
            start = None
    bridge = bridge_ms / frame_ms
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and s - merged[-1][1] < bridge:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    sec = n / sample_rate
    return [(s * sec, e * sec) for s, e in merged if (e - s) * frame_ms >= min_ms]


def segment_windows(wave: np.ndarray, segments: list[tuple[float, float]],
                    frontend: FrontendConfig) -> np.ndarray:
    """``[segments, samples]``: the front-end's window centred on each segment (zeros
    beyond the recording's ends)."""
    size = frontend.num_samples
    rate = frontend.sample_rate
    padded = np.concatenate([np.zeros(size, np.float32), wave.astype(np.float32),
                             np.zeros(size, np.float32)])
    out = np.zeros((len(segments), size), np.float32)
    for k, (s, e) in enumerate(segments):
        mid = int(round((s + e) / 2 * rate)) + size
        out[k] = padded[mid - size // 2: mid - size // 2 + size]
    return out


def segment_features(wave: np.ndarray, frontend: FrontendConfig, **vad
                     ) -> tuple[np.ndarray, Tensor]:
    """``(end times [segments], features [segments, 1, F, frames])`` of a recording's
    speech segments (``vad``: options of :func:`speech_segments`)."""
    from metavox.pipeline.enroll import featurize_waves

    segments = speech_segments(wave, frontend.sample_rate, **vad)
    if not segments:
        return np.zeros(0), torch.zeros(0, 1, frontend.num_features, frontend.num_frames)
    windows = segment_windows(wave, segments, frontend)
    feats = torch.cat([featurize_waves(list(windows[i:i + 64]), frontend)
                       for i in range(0, len(windows), 64)])
    return np.array([e for _, e in segments]), feats
