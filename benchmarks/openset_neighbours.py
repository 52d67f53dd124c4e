"""Synthetic near-homophones against the open set's worst tail: does contrasting each
enrolled word with eSpeak NG renderings of its one-phoneme neighbours help?

The clip-level open set of protocol 1 (``metavox evaluate --open-set``; frozen nearest
centroid on the fused bases, max-pooled) fails mostly on one near-homophone: real *tree*
clips scored against an enrolled *three* fill the 1% tail (docs/results.md, "Learning to
reject"). Nothing a user records says that *three* has such a neighbour, but its
spelling does. For each test word this study:

1. transcribes it with eSpeak NG (``en-us``) and makes every one-phoneme substitution the
   word bank's similarity rule allows (:func:`metavox.data.synth.phonemes.neighbours`:
   *three* /Tri:/ -> /tri:/, /fri:/, /Sri:/, ...), keeping speakable ones;
2. renders the word itself and each neighbour with the first 8 built-in synthetic
   speakers and embeds them with the fusion front-end: ``S_w`` (the word's own synthetic
   centroid) and ``N_w`` (one centroid per neighbour);
3. scores a pool clip ``q`` against the word as ``cos(q, c_w) - lam * (max_j cos(q, N_wj) -
   cos(q, S_w))``: the plain centroid cosine, lowered by how much more ``q`` resembles a
   synthetic neighbour than the synthetic word (both sides synthetic, so the voice gap
   cancels); ``--cut``: neighbours whose centroid is closer than this to ``S_w`` (other
   pronunciations of the word itself, to the embedding) are left out.

Same episodes, pool and summary as ``benchmarks/openset_scoring.py``; ``lam = 0`` is the
frozen centroid. ``--part val`` enrolls the validation words instead (the test words are
then among the non-targets), to choose ``lam`` and ``cut`` away from the test words.
Needs the frozen fusion run of docs/results.md and the synth extra::

    python benchmarks/openset_neighbours.py runs/frozen-fusion [--episodes 300] [--cut 1.0,0.9]
        [--part val]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from openset_scoring import centroids, fused, load_fusion_run, score_episodes, split_fusion
from torch import Tensor

from metavox.engine.openset_eval import summarize
from metavox.pipeline.build import make_sampler
from metavox.pipeline.evaluate import open_set_pool

SPEAKERS = 8


def neighbour_clips(word: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    """The word and its one-phoneme neighbours spoken by the first built-in speakers:
    ``(waves, index of the spoken form (0: the word), the forms' phonemes)``."""
    import espeakng_loader

    from metavox.data.synth.engine import get_engine
    from metavox.data.synth.generate import plan_clip, render_clip
    from metavox.data.synth.phonemes import (
        neighbours,
        parse_transcription,
        read_phoneme_tables,
        speakable,
        spell,
        table_mnemonics,
    )
    from metavox.data.synth.seeds import SEED_WORDS
    from metavox.data.synth.speakers import SPEAKERS as BUILTIN

    engine = get_engine()
    tables = read_phoneme_tables((Path(espeakng_loader.get_data_path()) / "phontab")
                                 .read_bytes())
    mnem = table_mnemonics(tables, "en")

    def transcribe(text: str):
        engine.set_voice("en-us")
        return parse_transcription(engine.phonemes(text, separator="_"), mnem, False)

    inventory = sorted({p for t in SEED_WORDS["en"] for p, _ in (transcribe(t) or [])})
    ph = transcribe(word)
    if ph is None:
        raise SystemExit(f"eSpeak NG gave no usable transcription of {word!r}")
    forms = [ph]
    for i, (p, stress) in enumerate(ph):
        for sub in neighbours(p, inventory):
            new = [*ph[:i], (sub, stress), *ph[i + 1:]]
            if speakable(new, mnem) and new not in forms:
                forms.append(new)
    waves, kinds = [], []
    for j, form in enumerate(forms):
        for speaker in BUILTIN[:SPEAKERS]:
            engine.set_voice(speaker.voice)
            audio, _ = render_clip(engine, plan_clip(speaker, f"{word}-{j}", 0, 0),
                                   text=f"[[{spell(form)}]]", phonemes=True)
            waves.append(audio.astype(np.float32) / 32768.0)
            kinds.append(j)
    return waves, kinds, [spell(f) for f in forms]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run on the fusion model (e.g. runs/frozen-fusion)")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--lam", default="0,0.5,1")
    ap.add_argument("--cut", default="1.0,0.9")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples (intervals)")
    ap.add_argument("--part", default="test", choices=("test", "val"),
                    help="whose words are enrolled: the test words, or the validation words "
                    "(to choose lam and cut away from the test words; the other part's "
                    "words are then the non-targets)")
    args = ap.parse_args()
    from metavox.pipeline.enroll import featurize_waves

    torch.set_grad_enabled(False)
    loaded, data = load_fusion_run(args.run)
    cfg = loaded.config
    test, val = data.parts["test"], data.parts.get("val")
    if args.part == "val":
        if val is None:
            raise SystemExit(f"{args.run} has no validation words")
        test, val = val, test
    pool = open_set_pool(loaded, test, val)
    labels = np.asarray(pool.labels)

    def embed(x: Tensor) -> Tensor:
        speech, resnet = split_fusion(x)
        return fused(speech, resnet, "max")

    feats = embed(pool.x)
    own, near, cos = {}, {}, {}
    for w in sorted(set(test.labels)):
        waves, kinds, forms = neighbour_clips(w)
        f, k = embed(featurize_waves(waves, loaded.frontend)), torch.tensor(kinds)
        own[w] = F.normalize(f[k == 0].mean(0), dim=-1)
        near[w] = torch.stack([F.normalize(f[k == j].mean(0), dim=-1)
                               for j in range(1, len(forms))])
        cos[w] = near[w] @ own[w]
        print(f"{w}: /{forms[0]}/, {len(forms) - 1} neighbours (cosine to the word's own "
              f"rendering {float(cos[w].min()):.2f}-{float(cos[w].max()):.2f}): "
              f"{', '.join('/' + x + '/' for x in forms[1:7])}, ...")

    def scorer(lam: float, cut: float):
        kept = {w: near[w][cos[w] <= cut] if (cos[w] <= cut).any()
                else near[w][cos[w].argmin()][None] for w in near}

        def score(support: np.ndarray, rows: np.ndarray) -> Tensor:
            base = feats[rows] @ centroids(feats, support).t()
            if lam == 0:
                return base
            pen = torch.stack([(feats[rows] @ kept[w].t()).max(-1).values - feats[rows] @ own[w]
                               for w in (labels[support[i, 0]] for i in range(len(support)))],
                              1)
            return base - lam * pen
        return score

    def pct(v: list[float]) -> str:
        return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}"

    print("\n| shots | lam | cut | det at 1% | det at 0.1% | EER |\n|---|---|---|---|---|---|")
    for k in (1, 5):
        fewest = min(np.unique(np.asarray(test.labels), return_counts=True)[1])
        queries = min(15, int(fewest) - k)  # the validation words have fewer clips
        sampler = make_sampler(test, replace(cfg.episodes, queries=queries), seed=cfg.seed,
                               stream="test", shots=k)
        for lam in (float(x) for x in args.lam.split(",")):
            for cut in ((1.0,) if lam == 0 else (float(x) for x in args.cut.split(","))):
                r = summarize(score_episodes(scorer(lam, cut), sampler, labels, args.episodes),
                              boot=args.boot, seed=cfg.seed)
                print(f"| {k} | {lam:g} | {cut:g} | {pct(r.detection['1%'])} | "
                      f"{pct(r.detection['0.1%'])} | {pct(r.eer)} |", flush=True)


if __name__ == "__main__":
    main()
