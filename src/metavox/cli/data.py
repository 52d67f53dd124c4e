"""``metavox data ...``: corpus inspection and generation, and feature caches built ahead."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from metavox.cli.common import PROGRESS_HELP, QUIET_HELP, printable, progress_output, user_errors
from metavox.cli.common import fail as _fail

if TYPE_CHECKING:
    from metavox.data.corpus import ScanReport

data_app = typer.Typer(help="Inspect and generate speech corpora.", no_args_is_help=True)


# ----------------------------------------------------------------------------- scan


@data_app.command()
def scan(
    path: Path = typer.Argument(..., help="Corpus root folder (or a .csv manifest)."),
    pattern: str | None = typer.Option(
        None, "--pattern", "-p",
        help="Path pattern under PATH, e.g. '{label}/{speaker}_nohash_{n}.wav'.",
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Known layout: speech-commands or fsdd."
    ),
    manifest: Path | None = typer.Option(
        None, "--manifest", "-m", help="CSV with path,label,speaker (paths relative to PATH)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    check_audio: bool = typer.Option(
        True, "--audio/--no-audio", help="Read every file header (durations, sample rates)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Threads reading headers."),
) -> None:
    """Summarise a corpus: clips, labels, speakers, durations, sample rates, bad files.

    Without --pattern/--preset/--manifest the layout is detected from the presets.
    """
    import warnings

    from metavox.data.corpus import Corpus, CorpusError, detect_corpus, scan_corpus

    if sum(x is not None for x in (pattern, preset, manifest)) > 1:
        raise _fail("give at most one of --pattern, --preset, --manifest")
    try:
        if manifest is not None:
            corpus = Corpus.from_manifest(manifest, root=path)
        elif path.suffix.lower() == ".csv" and path.is_file():
            corpus = Corpus.from_manifest(path)
        elif pattern is not None:
            corpus = Corpus.from_pattern(path, pattern)
        elif preset is not None:
            corpus = Corpus.from_preset(preset, path)
        else:
            corpus = detect_corpus(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files are listed in the report
            report = scan_corpus(corpus, check_audio=check_audio, workers=workers)
    except CorpusError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    _print_report(report)


def _print_report(r: ScanReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"corpus {r.name}", show_header=False, title_justify="left")
    summary.add_column("what", style="bold")
    summary.add_column("value")
    summary.add_row("root", r.root)
    summary.add_row("source", r.source)
    summary.add_row("clips", str(r.clips))
    summary.add_row("labels", str(r.labels))
    spk = str(r.speakers)
    if r.unknown_speaker_clips:
        spk += f" ({r.unknown_speaker_clips} clips without speaker)"
    summary.add_row("speakers", spk)
    if r.clips_per_speaker:
        counts = list(r.clips_per_speaker.values())
        summary.add_row("clips/speaker", f"min {min(counts)}, median "
                        f"{statistics.median(counts):g}, max {max(counts)}")
    if r.duration_min is not None:
        summary.add_row("duration (s)", f"min {r.duration_min:.3f}, median "
                        f"{r.duration_median:.3f}, max {r.duration_max:.3f}")
        summary.add_row("total", f"{r.total_hours:.2f} h")
        summary.add_row("sample rates", ", ".join(f"{k} Hz x{v}" for k, v in
                                                  r.sample_rates.items()))
        summary.add_row("formats", ", ".join(f"{k} x{v}" for k, v in r.formats.items()))
        summary.add_row("channels", ", ".join(f"{k} x{v}" for k, v in r.channels.items()))
    summary.add_row("unreadable", str(len(r.unreadable)) if r.audio_checked
                    else "not checked (--no-audio)")
    console.print(summary)

    labels = Table(title="clips per label", title_justify="left")
    labels.add_column("label")
    labels.add_column("clips", justify="right")
    labels.add_column("speakers", justify="right")
    for name, n in r.clips_per_label.items():
        labels.add_row(name, str(n), str(r.speakers_per_label.get(name, 0)))
    console.print(labels)

    if r.clips_per_speaker:
        top = list(r.clips_per_speaker.items())[:10]
        title = "clips per speaker" + (f" (top 10 of {r.speakers})" if r.speakers > 10 else "")
        speakers = Table(title=title, title_justify="left")
        speakers.add_column("speaker")
        speakers.add_column("clips", justify="right")
        for name, n in top:
            speakers.add_row(name, str(n))
        console.print(speakers)

    if r.unreadable:
        bad = Table(title=f"unreadable files ({len(r.unreadable)}, skipped)",
                    title_justify="left")
        bad.add_column("path")
        bad.add_column("reason")
        for p, why in r.unreadable[:20]:
            bad.add_row(p, why)
        console.print(bad)


# ----------------------------------------------------------------------------- synth


def _word_list(spec: str) -> list[str]:
    """``--words``: a file with one word per line, or words separated by commas/spaces."""
    path = Path(spec).expanduser()
    text = path.read_text(encoding="utf-8") if path.is_file() else spec
    return text.replace(",", " ").split()


@data_app.command()
def synth(
    out: Path | None = typer.Option(
        None, "--out", "-o",
        help="Output folder [default: $METAVOX_CACHE or ~/.cache/metavox, + /synth-v1].",
    ),
    speakers: int | None = typer.Option(
        None, "--speakers", "-s",
        help="How many built-in speakers [default: 64; with --bank 8].",
    ),
    words: str | None = typer.Option(
        None, "--words", "-w",
        help="Comma-separated words, or a file with one word per line [default: the 248 "
        "built-in words]. With --bank: how many words [default: 3000].",
    ),
    reps: int | None = typer.Option(
        None, "--reps", help="Clips per speaker and word [default: 3; with --bank 2]."
    ),
    bank: bool = typer.Option(
        False, "--bank",
        help="Generate the multilingual word bank with near-homophones instead "
        "(default folder synth-bank-v1; see docs/data.md).",
    ),
    languages: str | None = typer.Option(
        None, "--languages",
        help="With --bank: comma-separated language codes [default: en,de,fr,es,it,pt,nl,"
        "pl,ru,hi,tr,sw,vi,cmn].",
    ),
    backgrounds: Path | None = typer.Option(
        None, "--backgrounds",
        help="With --bank: a folder of recordings (.wav/.flac/.ogg) to mix under the speech "
        "instead of generated noise, e.g. Speech Commands' _silence_ folder.",
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files (bit for bit)."),
    workers: int | None = typer.Option(
        None, "--workers", help="Parallel processes [default: the usable CPUs]."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a corpus made in OUT with other settings."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Generate the built-in synthetic corpus offline (needs: pip install 'metavox[synth]').

    Words spoken by synthetic eSpeak NG speakers, as 1 s 16 kHz WAV clips with a
    manifest.csv; rerunning resumes an interrupted run. Synthetic speech is far cleaner and
    more uniform than people's: results on it are a demonstration.
    """
    from metavox.data.synth import SynthError, synthesize_corpus

    if bank:
        _synth_bank(out, speakers, words, reps, seed, workers, overwrite, quiet, languages,
                    backgrounds)
        return
    if languages is not None or backgrounds is not None:
        raise _fail("--languages and --backgrounds apply to the word bank only (add --bank)")
    reps = 3 if reps is None else reps
    try:
        word_list = None if words is None else _word_list(words)
        result = synthesize_corpus(out, speakers=64 if speakers is None else speakers,
                                   words=word_list, reps=reps, seed=seed, workers=workers,
                                   overwrite=overwrite, progress=not quiet)
    except (SynthError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"{result.n_clips} clips ({result.n_speakers} speakers x {result.n_words} words x "
        f"{reps}) in {result.out}; {result.n_written} written in {result.seconds:.1f} s "
        f"with {result.workers} worker(s)\nmanifest: {result.manifest}"
    )


def _synth_bank(out: Path | None, speakers: int | None, words: str | None, reps: int | None,
                seed: int, workers: int | None, overwrite: bool, quiet: bool,
                languages: str | None, backgrounds: Path | None) -> None:
    """``metavox data synth --bank``: the multilingual word bank."""
    from metavox.data.synth import SynthError
    from metavox.data.synth.bank import (
        DEFAULT_BANK_REPS,
        DEFAULT_BANK_SPEAKERS,
        DEFAULT_BANK_WORDS,
        synthesize_bank,
    )

    try:
        n_words = DEFAULT_BANK_WORDS if words is None else int(words)
    except ValueError:
        raise _fail(f"with --bank, --words is a number of words, not {words!r}") from None
    langs = None if languages is None else languages.replace(",", " ").split()
    try:
        result = synthesize_bank(
            out, words=n_words, languages=langs,
            speakers=DEFAULT_BANK_SPEAKERS if speakers is None else speakers,
            reps=DEFAULT_BANK_REPS if reps is None else reps, seed=seed,
            backgrounds=backgrounds, workers=workers, overwrite=overwrite,
            progress=not quiet)
    except (SynthError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"{result.n_clips} clips ({result.n_speakers} speakers x {result.n_words} words in "
        f"{len(result.languages)} languages) in {result.out}; {result.n_written} written in "
        f"{result.seconds:.1f} s with {result.workers} worker(s)\nmanifest: {result.manifest}"
    )


# ----------------------------------------------------------------------------- features


@data_app.command()
def features(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML run config (defaults for anything it leaves out)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a setting, e.g. --set data.cache_dir=/shared/cache."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1,
        help="Processes featurizing [default: data.feature_workers, else one per usable core; "
        "under torchrun: the cores divided by the ranks on the node].",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Build a run's feature cache (every corpus it reads) without training.

    `metavox train` builds the same cache when it needs it; this builds it ahead, on as many
    cores and machines as you have. Featurization is resumable: after an interruption, run
    the same command again and it continues from the finished chunks.

    Examples:

      metavox data features -c configs/speech_commands_embedding.toml

      metavox data features -c run.toml --workers 8

      # two machines sharing /shared (the cache folder must be on both):
      torchrun --nnodes 2 --nproc-per-node 1 --node-rank 0 --rdzv-backend c10d \\
        --rdzv-endpoint host0:29500 -m metavox data features -c run.toml \\
        --set data.cache_dir=/shared/metavox-cache
    """
    import os

    from metavox.pipeline.build import build_run_data
    from metavox.pipeline.config import load_config

    with user_errors(), progress_output(progress):
        extra = [f"data.feature_workers={workers}"] if workers else []
        cfg = load_config(config, list(overrides) + extra)
        data = build_run_data(cfg, progress=not quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    stores = [data.store, *(store for store, _ in data.mix)]
    for store in stores:
        typer.echo(f"{printable(store.path)}: {len(store)} clips, features "
                   f"{store.shape[1]} x {store.shape[2]} ({store.index['dtype']})")
