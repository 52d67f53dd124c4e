"""Spectrograms of a few words by several speakers of the built-in synthetic corpus.

    python examples/plot_synth_corpus.py [--corpus DIR] [--out docs/images/synth_spectrograms.png]

With ``--corpus`` the clips are read from a generated corpus (``metavox data synth``);
without it, a tiny corpus with just these words and speakers is generated in a temporary
folder (needs ``pip install 'metavox[synth]'``).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
from scipy.signal import spectrogram

from metavox.data.synth import synthesize_corpus
from metavox.data.synth.speakers import speaker_by_id

WORDS = ["yes", "seven", "computer", "yellow"]
SPEAKERS = ["s02", "s05", "s12", "s39", "s47"]


def _rows(corpus: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as fh:
        return {(r["label"], r["speaker"]): r for r in csv.DictReader(fh) if r["rep"] == "0"}


def plot(corpus: Path, out: Path) -> None:
    """Draw the words (rows) by the speakers (columns) from ``corpus`` into ``out``."""
    rows = _rows(corpus)
    fig, axes = plt.subplots(len(WORDS), len(SPEAKERS), figsize=(2.6 * len(SPEAKERS),
                                                                 1.9 * len(WORDS)),
                             sharex=True, sharey=True, constrained_layout=True)
    image = None
    for i, word in enumerate(WORDS):
        for j, sid in enumerate(SPEAKERS):
            ax = axes[i, j]
            row = rows[(word, sid)]
            x, sr = sf.read(corpus / row["path"], dtype="float32")
            f, t, s = spectrogram(x, fs=sr, window="hann", nperseg=400, noverlap=240,
                                  nfft=512, mode="psd")
            db = 10 * np.log10(s + 1e-12)
            db -= db.max()  # each panel relative to its own peak
            image = ax.pcolormesh(t, f / 1000, db, shading="auto", cmap="magma",
                                  vmin=-80, vmax=0, rasterized=True)
            ax.text(0.02, 0.95, f"SNR {float(row['snr_db']):.0f} dB", color="white",
                    fontsize=7, va="top", transform=ax.transAxes)
            if i == 0:
                spk = speaker_by_id(sid)
                ax.set_title(f"{sid}: {spk.accent}+{spk.variant}\n({spk.register} voice, "
                             f"{spk.split})", fontsize=8)
            if j == 0:
                ax.set_ylabel(f'"{word}"\nkHz', fontsize=9)
            if i == len(WORDS) - 1:
                ax.set_xlabel("s", fontsize=8)
            ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="dB re the panel's peak")
    fig.suptitle("metavox built-in synthetic corpus: 4 words x 5 of the 64 speakers "
                 "(1 s clips, 16 kHz, repetition 0; test = held-out voice)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None,
                        help="a generated synthetic corpus (default: make a tiny one)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/synth_spectrograms.png"))
    args = parser.parse_args()
    if args.corpus is not None:
        plot(args.corpus, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "synth"
        synthesize_corpus(corpus, speakers=SPEAKERS, words=WORDS, reps=1)
        plot(corpus, args.out)


if __name__ == "__main__":
    main()
