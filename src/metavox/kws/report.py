"""The stream protocol for a meta-trained run: methods, negatives, the report (JSON,
Markdown table, DET plot)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from metavox.data import Corpus
from metavox.kws.protocol import MARGINS, StreamConfig, StreamResult, evaluate_streams
from metavox.kws.spotter import SpotSettings
from metavox.meta import ProtoNet
from metavox.pipeline.build import RunData, build_model, build_run_data
from metavox.pipeline.enroll import negative_pool, read_negatives
from metavox.pipeline.select import AdaptationSettings
from metavox.pipeline.train import load_trained
from metavox.storage import atomic_write


def run_streams(checkpoint: str | Path, *, episodes: int = 12, shots: list[int] | None = None,
                ways: int = 5, far: float = 0.01, calibration: str = "streams",
                out: str | Path | None = None, progress: bool = False,
                config: StreamConfig | None = None,
                extra_negatives: str | Path | None = None, decision: str = "windows",
                rule: str = "logit",
                inner_lr: float | None = None, steps: int | None = None,
                kind: str = "words", cascade: tuple[float, ...] = ()) -> dict:
    """Run the stream protocol on the run's test words for its meta-learner and the
    nearest-centroid baseline on its untrained backbone; write the report.

    The streams respect the run's split (:func:`stream_corpus`): when it holds speakers
    out, enrollment clips, targets and non-targets are all by its test speakers, and the
    negative streams of the calibration by its training speakers. ``extra_negatives``: a
    folder of extra negative recordings for the open-set calibration and bank (as
    ``metavox adapt --negatives``); ``inner_lr`` / ``steps``: the meta-learner's test-time
    adaptation (default: the settings chosen on validation, else the training config's);
    ``rule``: the open-set rule of every method (see :class:`StreamConfig`); ``kind``: the
    non-target speech, ``"words"`` (the corpus's other words) or
    ``"sentences"`` (sentences spoken by the synthesiser, :mod:`metavox.kws.sentences`);
    ``cascade``: on the fusion base, stage-1 rates of the cascade scored beside verifying
    every hop (:mod:`metavox.kws.cascade`)."""
    loaded = load_trained(checkpoint, inner_lr=inner_lr, steps=steps)
    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    cfg = config or StreamConfig(episodes=episodes, shots=tuple(shots or (1, 3, 5)),
                                 ways=ways, far=far, calibration=calibration,
                                 seed=loaded.config.seed, kind=kind, rule=rule,
                                 settings=SpotSettings(decision=decision),
                                 cascade=tuple(cascade))
    data = build_run_data(loaded.config, progress=progress)
    if "test" not in data.parts:
        raise ValueError("the run's split has no test part to build streams from")
    test_words = sorted(set(data.parts["test"].labels))
    torch.manual_seed(loaded.config.seed + 13)
    fresh = build_model(loaded.config, (loaded.frontend.num_features,
                                        loaded.frontend.num_frames), loaded.config.episodes.ways)
    methods = {loaded.config.algorithm.name: loaded.algo, "nearest centroid": ProtoNet(fresh)}
    negatives = negative_pool(loaded)
    if extra_negatives is not None:
        negatives.append(read_negatives(extra_negatives, loaded.frontend))
    train_words = set(data.parts["train"].labels)
    streams = None
    if cfg.calibration == "streams":
        from metavox.kws.calibrate import negative_streams

        paths = [u.path for u in stream_corpus(data, "train") if u.label in train_words]
        streams = negative_streams(paths, loaded.frontend, seed=loaded.config.seed)
    corpus = stream_corpus(data, "test")
    try:
        results = evaluate_streams(methods, corpus, test_words, loaded.frontend, negatives,
                                   cfg, exclude=train_words, streams=streams,
                                   progress=progress)
    except ValueError as err:
        part = data.split.part("test")
        if part.speakers is None:
            raise
        raise ValueError(f"{err} (by the split's {len(part.speakers)} test speakers)"
                         ) from None
    folder = Path(out) if out is not None else run_dir / "report" / "streams"
    return write_report(results, cfg, folder, test_words,
                        sum(len(n) for n in negatives if n is not None),
                        split=split_record(data, results), adaptation=loaded.adaptation)


def stream_corpus(data: RunData, part: str) -> Corpus:
    """The clips the stream protocol may draw on for ``part`` of the run's split: the
    corpus by the part's speakers when the split holds speakers out (modes ``speaker``
    and ``both``), else the whole corpus (a class split holds out words only; which
    words serve is up to the protocol: enrolled test words, never the training words as
    non-targets)."""
    speakers = data.split.part(part).speakers
    return data.corpus if speakers is None else data.corpus.filter(speakers=speakers)


def split_record(data: RunData, results: list[StreamResult]) -> dict:
    """Which speakers and words the streams used, for the report: the split's mode,
    whether the speakers were held out, its test speakers, the speakers whose clips the
    streams held, the words enrolled and the non-target words placed."""
    test_speakers = data.split.part("test").speakers
    return {
        "mode": data.split.mode,
        "speakers_held_out": test_speakers is not None,
        "test_speakers": None if test_speakers is None else sorted(test_speakers),
        "speakers_used": sorted({s for r in results for s in r.speakers}),
        "words_enrolled": sorted({w for r in results for w in r.by_word}),
        "nontarget_words": sorted({w for r in results for w in r.nontarget_vocabulary}),
        "voices": sorted({v for r in results for v in r.voices}),
    }


def split_lines(split: dict | None) -> list[str]:
    """A Markdown paragraph on the speakers and words the streams used."""
    if not split:
        return []
    used = split["speakers_used"]
    if split["speakers_held_out"]:
        who = (f"Speakers held out (split `{split['mode']}`): enrollment clips, targets and "
               f"non-targets are all by the run's {len(split['test_speakers'])} test "
               f"speakers; the streams used {len(used)}: {', '.join(used)}.")
    else:
        who = (f"Speakers not held out (split `{split['mode']}` holds out words only): the "
               f"clips are by any of the corpus's speakers, meta-training speakers "
               f"included ({len(used)} in the streams).")
    words = (f" Words enrolled: {', '.join(split['words_enrolled'])}; non-target words: "
             f"{', '.join(split['nontarget_words']) or 'none'}.")
    if split.get("voices"):
        words += (f" The non-target speech is sentences spoken by the synthetic voices "
                  f"{', '.join(split['voices'])} (eSpeak NG).")
    return ["", who + words]


def summary(r: StreamResult, cfg: StreamConfig) -> dict:
    """One table row: rates at <= 1 FA/h and at <= 1 false accept per 100 non-target words
    (any point of the curve) and at the configured operating point (false accepts there
    per hour and per 100 non-target words), latency there."""
    j = list(r.far).index(cfg.operating_point)
    lat = float(np.median(r.latencies)) * 1000 if r.latencies else float("nan")
    return {"method": r.method, "shots": r.shots, "rate_at_1": r.rate_at(1.0),
            "rate_at_1_per_100_words": r.rate_at_per_100_words(1.0),
            "rate_at_far": r.detection_rate[j], "fa_per_hour_at_far": r.fa_per_hour[j],
            "fa_per_100_words_at_far": r.fa_per_100_words[j],
            "latency_ms": lat, "targets": r.targets, "hours": r.hours,
            "nontarget_words": r.nontarget_words, "verified_fraction": r.verified_fraction}


def write_report(results: list[StreamResult], cfg: StreamConfig, folder: Path,
                 test_words: list[str], negative_clips: int | None = None, *,
                 split: dict | None = None, adaptation: AdaptationSettings | None = None
                 ) -> dict:
    """``streams.json``, ``streams.md`` and ``streams.png`` (DET curves) in ``folder``
    (``negative_clips``: how many clips the open-set calibration drew on, for the record;
    ``split``: the speakers and words used, :func:`split_record`; ``adaptation``: the
    meta-learner's test-time settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [summary(r, cfg) for r in results]
    data = {"config": {k: v for k, v in vars(cfg).items() if k != "settings"}
            | {"decision": cfg.decision, "settings": asdict(cfg.settings)},
            "test_words": test_words, "rows": rows,
            "negative_clips": negative_clips, "split": split,
            "adaptation": None if adaptation is None else adaptation.to_dict(),
            "curves": [r.to_dict() for r in results]}
    atomic_write(folder / "streams.json", json.dumps(data, indent=1, default=list))
    point = (f"calibrated to {cfg.fa_per_hour:g} FA/h on negative streams"
             if cfg.calibration == "streams" else f"calibrated to far = {cfg.far:g} on clips")
    lines = ["| method | shots | detection rate at <= 1 FA/h | detection rate at <= 1 FA per "
             "100 non-target words | " + point + ": detection rate | FA/h | FA per 100 "
             "non-target words | median latency (ms) | hops verified |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['shots']} | {100 * r['rate_at_1']:.1f}% | "
              f"{100 * r['rate_at_1_per_100_words']:.1f}% | "
              f"{100 * r['rate_at_far']:.1f}% | {r['fa_per_hour_at_far']:.2f} | "
              f"{r['fa_per_100_words_at_far']:.2f} | {r['latency_ms']:.0f} | "
              f"{100 * r['verified_fraction']:.1f}% |" for r in rows]
    hours = rows[0]["hours"] if rows else 0.0
    per_hour = results[0].nontarget_words / max(hours, 1e-9) if results else 0.0
    speech = ("spoken sentences (each counts its words)" if cfg.kind == "sentences"
              else "clips of other words")
    lines.append(f"\n{cfg.episodes} streams, {rows[0]['targets'] if rows else 0} target words "
                 f"and {hours:.2f} h of non-target audio per cell "
                 f"({results[0].nontarget_words if results else 0} non-target words in "
                 f"{speech}, "
                 f"{per_hour:.0f} per hour: 1 FA/h is one false accept in {per_hour:.0f} "
                 f"non-target words); test words: {', '.join(test_words)}. "
                 f"At <= 1 FA/h and at <= 1 FA per 100 non-target words: the best point of "
                 f"the curve, including thresholds past the "
                 f"strictest calibrated one (raised by {MARGINS[0]:g} to {MARGINS[-1]:g} "
                 f"spreads of the negatives' scores, in {len(MARGINS)} steps).")
    lines += split_lines(split)
    if adaptation is not None:
        lines += ["", adaptation.describe()]
    lines += breakdown_lines(results, cfg)
    atomic_write(folder / "streams.md", "\n".join(lines) + "\n")
    plot_det(results, folder / "streams.png")
    return {"rows": rows, "path": str(folder), "split": split,
            "adaptation": None if adaptation is None else adaptation.to_dict()}


def breakdown_lines(results: list[StreamResult], cfg: StreamConfig, *, top: int = 12
                    ) -> list[str]:
    """Markdown at the operating point, for each method at its most shots: detection per
    test word and per SNR, and the most frequent false accepts by what was being said."""
    point = (f"{cfg.fa_per_hour:g} FA/h" if cfg.calibration == "streams"
             else f"far = {cfg.far:g}")
    most = max((r.shots for r in results), default=0)
    lines = []
    for r in (r for r in results if r.shots == most):
        lines += [f"\n### {r.method}, {r.shots}-shot, at {point}\n",
                  "| test word | detected | of |", "|---|---|---|"]
        lines += [f"| {w} | {100 * h / max(n, 1):.1f}% | {n} |"
                  for w, (h, n) in sorted(r.by_word.items())]
        lines += ["", "| SNR (dB) | detected | false accepts / h | false accepts / 100 "
                  "non-target words |", "|---|---|---|---|"]
        lines += [f"| {snr} | {100 * h / max(n, 1):.1f}% | {f / max(hours, 1e-9):.1f} | "
                  f"{100 * f / max(words, 1):.2f} |"
                  for snr, (h, n, f, hours, words) in sorted(r.by_snr.items(),
                                                             key=lambda kv: -float(kv[0]))]
        worst = sorted(r.confusions.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        total = sum(r.confusions.values())
        lines += ["", f"False accepts ({total}), the {len(worst)} most frequent, as "
                  "*heard -> named*: " + ", ".join(f"{k} ({n})" for k, n in worst) + "."]
    return lines


def plot_det(results: list[StreamResult], path: Path) -> None:
    """Detection rate against false accepts, one curve per method and shots, in two
    panels: per hour of non-target audio, and per 100 non-target words. A method keeps
    one colour, the number of shots its marker (so a dozen curves stay apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2), sharey=True)
    panels = (("fa_per_hour", "margin_fa_per_hour", 0.05,
               "false accepts per hour of non-target audio (0 drawn at 0.05)"),
              ("fa_per_100_words", "margin_fa_per_100_words", 0.01,
               "false accepts per 100 non-target words (0 drawn at 0.01)"))
    methods = list(dict.fromkeys(r.method for r in results))
    shots = sorted({r.shots for r in results})
    colours = plt.get_cmap("tab10").colors
    markers = "os^Dv<>p*h"
    for ax, (rates, margin_rates, floor, label) in zip(axes, panels, strict=True):
        for r in results:
            colour = colours[methods.index(r.method) % len(colours)]
            fa = np.maximum(np.asarray(getattr(r, rates)), floor)  # 0 on a log axis
            ax.plot(fa, 100 * np.asarray(r.detection_rate), color=colour, ms=3.5,
                    marker=markers[shots.index(r.shots) % len(markers)],
                    label=f"{r.method}, {r.shots}-shot")
            j = list(r.far).index(0.0)  # the strictest calibrated point, then past it
            ax.plot(np.maximum([getattr(r, rates)[j], *getattr(r, margin_rates)], floor),
                    100 * np.asarray([r.detection_rate[j], *r.margin_detection_rate]),
                    ls="--", marker=".", ms=3, lw=0.9, color=colour)
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("detection rate (%)")
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    fig.suptitle("dashed: thresholds past the strictest calibrated one", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
