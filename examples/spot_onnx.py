"""Spot your words in a WAV file with a model exported by `metavox export`, without metavox
or torch: numpy, soundfile and onnxruntime only.

    pip install numpy soundfile onnxruntime
    python spot_onnx.py my_words.onnx recording.wav [--json]

The exported model scores one clip (the last `clip_samples` samples of the stream, zeros
before the stream starts) every hop; this script slides that window over the file, averages
each word's open-set score over the last `smooth` hops, and reports the best word when its score
is at or above the calibrated threshold, then does not report that word again for `refractory`
seconds: the decisions `metavox listen` makes (all settings are read from the file's metadata).

With `--segments` it makes one decision per speech segment instead, as `metavox listen
--decision segments` does: 20 ms frames are loud when their energy is over the noise floor
(a percentile of the last seconds of frames), loud stretches are bridged and bounded, and
each segment is scored once in a window centred on it that holds the segment and some
context either side, zeros beyond (all settings from the metadata's "segments").

A model on the heavy fusion base comes with a cascade (`my_words.stage1.onnx` beside it,
named in the metadata): the small stage-1 graph scores every window, and the full model
only candidate windows (stage-1 score at or above its threshold), and of a run of them only
one every `stride` hops; the score averaged is then that of the verified windows among the
last `smooth` hops, and a window that is not verified reports nothing. `--every-hop` runs
the full model on every window instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from math import gcd

import numpy as np
import onnxruntime as ort
import soundfile as sf


def read_mono(path: str, rate: int) -> np.ndarray:
    """The file as float32 mono at `rate` (a plain polyphase-free resampler: linear
    interpolation, enough for a demonstration; metavox itself uses scipy's)."""
    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != rate:
        g = gcd(sr, rate)
        n = len(wave) * (rate // g) // (sr // g)
        wave = np.interp(np.arange(n) * sr / rate, np.arange(len(wave)), wave)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def run_batches(session: ort.InferenceSession, output: str, windows: np.ndarray) -> np.ndarray:
    """One output of a graph over many windows, 64 at a time."""
    return np.concatenate([session.run([output], {"waveform": windows[i:i + 64]})[0]
                           for i in range(0, len(windows), 64)])


def spot(model_path: str, wave: np.ndarray, *, every_hop: bool = False) -> list[dict]:
    """Detections over a whole waveform: [{"word", "time", "score"}]."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["metavox"])
    rate, size, words = meta["sample_rate"], meta["clip_samples"], meta["words"]
    hop = round(meta["hop_seconds"] * rate)
    smooth, refractory = meta["smooth"], meta["refractory"]
    rule = meta["open_set"]
    threshold = -np.inf if rule["threshold"] is None else rule["threshold"]
    # the stream starts in silence; half a second of it after the end lets the last word
    # through the smoothing
    padded = np.concatenate([np.zeros(size, dtype=np.float32), wave,
                             np.zeros(rate // 2, dtype=np.float32)])
    ends = range(size + hop, len(padded) + 1, hop)  # one window per completed hop
    windows = np.stack([padded[e - size:e] for e in ends])
    cascade = None if every_hop else meta.get("cascade")
    if cascade is not None and not os.path.isfile(
            os.path.join(os.path.dirname(model_path), cascade["stage1_file"])):
        print(f"note: {cascade['stage1_file']} is not beside {model_path}: the full model "
              "runs on every window", file=sys.stderr)
        cascade = None
    if cascade is None:  # the full model on every window
        verified = np.ones(len(windows), dtype=bool)
        values = run_batches(session, "values", windows)
    else:  # stage 1 on every window; the full model on a candidate `stride` hops after
        # the last one it verified
        first = ort.InferenceSession(os.path.join(os.path.dirname(model_path),
                                                  cascade["stage1_file"]),
                                     providers=["CPUExecutionProvider"])
        t1 = -np.inf if cascade["threshold"] is None else cascade["threshold"]
        candidates = run_batches(first, cascade["output"], windows).max(axis=1) >= t1
        stride = cascade.get("stride", 4)
        verified = np.zeros(len(windows), dtype=bool)
        last = -stride
        for k in np.flatnonzero(candidates):
            if k - last >= stride:
                verified[k], last = True, k
        values = np.zeros((len(windows), len(words)), dtype=np.float32)
        if verified.any():
            values[verified] = run_batches(session, "values", windows[verified])
    out, last_seen = [], {}  # each word's last detection
    done = np.flatnonzero(verified)
    for n, k in enumerate(done):  # the verified windows of the last `smooth` hops, averaged
        recent = done[: n + 1][done[: n + 1] > k - smooth]
        mean = values[recent].mean(axis=0)
        best = int(np.argmax(mean))
        score = float(mean[best])
        t = (k + 1) * hop / rate
        if score >= threshold and t - last_seen.get(best, -np.inf) >= refractory:
            out.append({"word": words[best], "time": round(t, 3), "score": round(score, 4)})
            last_seen[best] = t
    return out


def speech_segments(wave: np.ndarray, rate: int, size: int, cfg: dict
                    ) -> list[tuple[float, np.ndarray]]:
    """(decision time, window of `size` samples) for each speech segment of `wave`."""
    frame = max(1, round(rate * cfg["frame_ms"] / 1000))
    n = len(wave)
    frames = -(-n // frame)
    chunks = np.concatenate([wave, np.zeros(frames * frame - n, np.float32)])
    power = np.mean(chunks.reshape(frames, frame).astype(np.float64) ** 2, axis=1)
    db = 20 * np.log10(np.sqrt(power) + 1e-6)
    history = max(1, round(cfg["history_s"] * rate / frame))
    bridge, longest = cfg["bridge_ms"] / cfg["frame_ms"], -(-cfg["max_ms"] // cfg["frame_ms"])
    context = round(cfg["context_ms"] / 1000 * rate)
    closed = []  # (first sample, end sample, sample at which the stretch closed)

    def close(first: int, end: int, now: int) -> None:
        if (end - first) * cfg["frame_ms"] >= cfg["min_ms"]:
            closed.append((first * frame, end * frame, now * frame))

    start, last = None, 0
    for f in range(frames):
        floor = np.percentile(db[max(0, f + 1 - history):f + 1], cfg["floor_percentile"])
        if db[f] > floor + cfg["above_db"]:
            start = f if start is None else start
            last = f
            if f + 1 - start >= max(1, longest):
                close(start, f + 1, f + 1)
                start = None
        elif start is not None and f - last >= bridge:
            close(start, last + 1, f + 1)
            start = None
    if start is not None:
        close(start, last + 1, frames)
    out = []
    for first, end, now in closed:
        mid = (first + end) // 2
        lo = mid - size // 2
        needed = min(end + context, mid + size - size // 2)
        window = np.zeros(size, np.float32)
        a, b = max(lo, first - context, 0), min(lo + size, end + context, n)
        if b > a:
            window[a - lo:b - lo] = wave[a:b]
        out.append((min(max(needed, now), n) / rate, window))
    return out


def spot_segments(model_path: str, wave: np.ndarray) -> list[dict]:
    """Detections over a whole waveform, one decision per speech segment."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["metavox"])
    rate, words = meta["sample_rate"], meta["words"]
    threshold = meta["open_set"]["threshold"]
    threshold = -np.inf if threshold is None else threshold
    # half a second of silence after the end, as for the sliding window
    wave = np.concatenate([wave, np.zeros(rate // 2, dtype=np.float32)])
    found = speech_segments(wave, rate, meta["clip_samples"], meta["segments"])
    if not found:
        return []
    values = run_batches(session, "values", np.stack([w for _, w in found]))
    out = []
    for (t, _), row in zip(found, values, strict=True):
        best = int(np.argmax(row))
        if row[best] >= threshold:
            out.append({"word": words[best], "time": round(t, 3),
                        "score": round(float(row[best]), 4)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file `metavox export` wrote")
    parser.add_argument("audio", help="a WAV/FLAC/Ogg file of any length")
    parser.add_argument("--json", action="store_true", help="one JSON object per detection")
    parser.add_argument("--every-hop", action="store_true", help="a cascade's full model on "
                        "every window (the comparison)")
    parser.add_argument("--segments", action="store_true", help="one decision per speech "
                        "segment (words spoken on their own) instead of every hop")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    rate = json.loads(session.get_modelmeta().custom_metadata_map["metavox"])["sample_rate"]
    wave = read_mono(args.audio, rate)
    found = (spot_segments(args.model, wave) if args.segments
             else spot(args.model, wave, every_hop=args.every_hop))
    for d in found:
        print(json.dumps(d) if args.json else f"{d['time']:8.2f} s\t{d['word']}\t"
              f"(score {d['score']:.3f})")


if __name__ == "__main__":
    main()
