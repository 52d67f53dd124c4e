"""Spot your words in a WAV file with a model exported by `metavox export`, without metavox
or torch: numpy, soundfile and onnxruntime only.

    pip install numpy soundfile onnxruntime
    python spot_onnx.py my_words.onnx recording.wav [--json]

The exported model scores one clip (the last `clip_samples` samples of the stream, zeros
before the stream starts) every hop; this script slides that window over the file, averages
each word's open-set score over the last `smooth` hops, and reports the best word when its score
is at or above the calibrated threshold, then does not report that word again for `refractory`
seconds: the decisions `metavox listen` makes (all settings are read from the file's metadata).
"""

from __future__ import annotations

import argparse
import json
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


def spot(model_path: str, wave: np.ndarray) -> list[dict]:
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
    values = np.concatenate([session.run(["values"], {"waveform": windows[i:i + 64]})[0]
                             for i in range(0, len(windows), 64)])
    out, last = [], {}  # each word's last detection
    for k in range(len(values)):  # every word's open-set score, averaged over `smooth` hops
        mean = values[max(0, k - smooth + 1): k + 1].mean(axis=0)
        best = int(np.argmax(mean))
        score = float(mean[best])
        t = (k + 1) * hop / rate
        if score >= threshold and t - last.get(best, -np.inf) >= refractory:
            out.append({"word": words[best], "time": round(t, 3), "score": round(score, 4)})
            last[best] = t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file `metavox export` wrote")
    parser.add_argument("audio", help="a WAV/FLAC/Ogg file of any length")
    parser.add_argument("--json", action="store_true", help="one JSON object per detection")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    rate = json.loads(session.get_modelmeta().custom_metadata_map["metavox"])["sample_rate"]
    for d in spot(args.model, read_mono(args.audio, rate)):
        print(json.dumps(d) if args.json else f"{d['time']:8.2f} s\t{d['word']}\t"
              f"(score {d['score']:.3f})")


if __name__ == "__main__":
    main()
