"""``metavox train``, ``evaluate``, ``adapt``, ``predict``, ``models``, ``algorithms``, ``demo``:
the pipeline commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from metavox.cli.common import (
    PROGRESS_HELP,
    QUIET_HELP,
    fail,
    print_table,
    printable,
    progress_output,
    user_errors,
)

if TYPE_CHECKING:
    from metavox.audio.io import AudioError
    from metavox.pipeline.enroll import Adapted


def train_command(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML config file (defaults for anything it leaves out)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a setting, e.g. --set optim.lr=3e-4 (repeatable)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (overrides `out`)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/latest.safetensors."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Meta-train a model on a speech corpus.

    Examples:

      metavox train --config configs/speech_commands_keywords.toml

      metavox train -c configs/speech_commands_keywords.toml --set algorithm.name=fomaml

      metavox train -c run.toml --resume
    """
    from metavox.pipeline.config import load_config
    from metavox.pipeline.train import train

    with user_errors(), progress_output(progress):
        cfg = load_config(config, list(overrides) + ([f'out="{out}"'] if out else []))
        result = train(cfg, resume=resume, progress=not quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    st = result.state
    typer.echo(f"trained {cfg.algorithm.name} for {st.iteration} iterations; "
               f"best validation accuracy {st.best_val:.3f} at iteration {st.best_iteration}")
    if result.selection is not None:
        sel = result.selection
        typer.echo(f"chosen on validation for adaptation: inner_lr {sel.inner_lr}, "
                   f"eval_steps {sel.eval_steps} (all candidates: {result.out}/selection.json)")
        if sel.warnings:
            typer.echo("(validation could not discriminate between them: see the warning "
                       "above, kept in selection.json)")
    typer.echo(f"checkpoints and logs in {result.out}")


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise fail(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    data: str | None = typer.Option(
        None, "--data", "-d",
        help="Meta-test corpus (preset, pattern, manifest or folder); default: the run's "
             "own test split.",
    ),
    root: str | None = typer.Option(None, "--root", help="Root folder for a preset or pattern."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated test classes."),
    ways: int | None = typer.Option(None, "--ways", help="Classes per episode."),
    shots: str | None = typer.Option(None, "--shots", help="Comma-separated, e.g. 1,5."),
    queries: int | None = typer.Option(None, "--queries", help="Queries per class."),
    episodes: int | None = typer.Option(None, "--episodes", help="Episodes per cell (>= 600 "
                                        "for published numbers)."),
    max_steps: int | None = typer.Option(None, "--max-steps",
                                         help="Inner steps for the accuracy-vs-steps curve."),
    inner_lr: float | None = typer.Option(
        None, "--inner-lr", help="The meta-learner's test-time inner learning rate "
        "(default: the one chosen on validation, else the training config's)."),
    steps: int | None = typer.Option(
        None, "--steps", help="The meta-learner's test-time inner steps: the headline "
        "accuracy is the one after them (default: chosen on validation, else the training "
        "config's eval_steps)."),
    baselines: str | None = typer.Option(
        None, "--baselines",
        help="Comma-separated: protonet,finetune,scratch,noadapt,centroid ('' for none).",
    ),
    open_set: bool | None = typer.Option(
        None, "--open-set/--no-open-set",
        help="Also measure the open set on the same episodes: detection of the right word "
        "at 1% / 0.1% / 0.01% false accepts per non-target clip, EER, DET plot (default: "
        "evaluation.open_set)."),
    report: Path | None = typer.Option(None, "--report", "-r",
                                       help="Report folder (default RUN/report)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 … (default: the run's; 'auto' = CUDA when "
                               "present)."),
    precision: str | None = typer.Option(
        None, "--precision", help="float32 or bfloat16 (autocast while adapting; default: "
                                  "the run's)."),
) -> None:
    """Few-shot accuracy (mean ± 95% CI) of a model and the baselines on the same episodes.

    Also writes accuracy-vs-steps and accuracy-vs-shots plots and a Markdown report.

    Examples:

      metavox evaluate runs/sc-maml --ways 5 --shots 1,5 --episodes 600

      metavox evaluate runs/demo --data speech-commands:DIR --labels eight,five,nine

      metavox evaluate runs/sc-maml --device cuda --precision bfloat16

      metavox evaluate runs/sc-maml/latest.safetensors --inner-lr 0.3 --steps 10

      metavox evaluate runs/sc-embedding-top1 --open-set --baselines centroid,protonet
    """
    from metavox.engine.distributed import from_environment, shutdown
    from metavox.pipeline.evaluate import evaluate
    from metavox.pipeline.report import open_set_table, results_table, write_report

    with user_errors(), progress_output(progress):
        try:  # under torchrun the ranks share the episodes; rank 0 reports
            rep = evaluate(checkpoint, data=data, root=root, labels=_str_list(labels),
                           ways=ways, shots=_int_list(shots), queries=queries,
                           episodes=episodes, max_steps=max_steps,
                           baselines=_str_list(baselines), progress=not quiet,
                           device=device, precision=precision, inner_lr=inner_lr,
                           steps=steps, open_set=open_set)
            if not from_environment().main:
                return
        finally:
            shutdown()
        run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
        folder = report or run_dir / "report"
        md = write_report(rep, folder)
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2))
        return
    typer.echo(results_table(rep))
    if rep.open_set:
        typer.echo("\nopen set (clip level): detection of the right word at a rate of false "
                   "accepts per non-target clip, %\n" + open_set_table(rep))
    typer.echo(f"\n{rep.adaptation_line()}")
    typer.echo(f"report: {md}")


def adapt_command(
    checkpoint: Path = typer.Argument(..., help="Meta-trained run folder or checkpoint."),
    examples: Path = typer.Option(..., "--examples", "-e",
                                  help="Folder with {word}/*.wav, 1-10 clips per word."),
    out: Path = typer.Option(Path("adapted.safetensors"), "--out", "-o",
                             help="Where to save the adapted model."),
    steps: int | None = typer.Option(None, "--steps", help="Inner steps (default: the "
                                     "model's evaluation steps)."),
    far: float | None = typer.Option(
        0.01, "--far", help="Open set: calibrate the 'unknown' answer so that at most this "
        "fraction of negative clips (generated noise, the run's own training words, "
        "--negatives) is taken for a word; --no-open-set turns it off."),
    open_set: bool = typer.Option(True, "--open-set/--no-open-set",
                                  help="Answer 'unknown' for clips that are none of the words."),
    rule: str | None = typer.Option(
        None, "--rule", help="Open-set score: logit (the distance to the word's prototype; "
        "the default), learned (the output of a model trained to reject; its default), "
        "background (the word's logit minus the nearest negative clip's) or probability."),
    negatives: Path | None = typer.Option(None, "--negatives", help="A folder of your own "
                                          "clips that are none of the words (any depth)."),
    fa_per_hour: float | None = typer.Option(
        1.0, "--fa-per-hour", help="Then, when the run's corpus is at hand, set the "
        "threshold on streams of its other words instead: at most this many false accepts "
        "per hour."),
) -> None:
    """Teach a meta-trained model your own words from a few recordings.

    Example:

      metavox adapt runs/demo --examples my_words/ --out my_words.safetensors

      metavox adapt runs/demo -e my_words/ --far 0.002 --negatives my_noise/
    """
    from metavox.pipeline.enroll import enroll, save_adapted
    from metavox.pipeline.train import load_trained

    with user_errors():
        if far is not None and not 0.0 <= far <= 1.0:
            raise typer.BadParameter(f"--far must be a rate in [0, 1], got {far}")
        loaded = load_trained(checkpoint)
        adapted = enroll(loaded, examples, steps=steps, far=far if open_set else None,
                         rule=rule, negatives=negatives, expect=True)
        if open_set and fa_per_hour is not None:
            from metavox.kws.calibrate import calibrate_enrolled

            on_streams = calibrate_enrolled(adapted, loaded, adapted.classes, fa_per_hour)
            if on_streams is not None:
                adapted.open_set = on_streams
        path = save_adapted(out, adapted, loaded)
    typer.echo(f"adapted to {len(adapted.classes)} words ({', '.join(adapted.classes)}); "
               f"saved {path}")
    o = adapted.open_set
    if o.fa_per_hour is not None:
        typer.echo(f"open set: '{o.rule}' threshold {o.threshold:.4g}, calibrated on a "
                   f"negative stream of the run's other words to at most {o.fa_per_hour:g} "
                   "false accepts per hour")
    elif o.far is not None:
        typer.echo(f"open set: '{o.rule}' threshold {o.threshold:.4g}, calibrated on "
                   f"{o.negatives} negative clips to accept at most {o.far:g} of them")
    expected = adapted.expectations()
    if expected is not None:
        typer.echo(f"\nwhat to expect (saved with the model):\n{expected.table()}")


def _classify(model: Adapted, files: list[Path]) -> list[tuple[str, dict] | AudioError]:
    """``model.predict_files(files)``, except that a file that cannot be read gives its
    :class:`AudioError` in its place and the others are still classified (together)."""
    from metavox.audio.io import AudioError, load_clip

    try:
        return list(model.predict_files(files))
    except AudioError:
        pass
    fe, errors = model.frontend, {}
    for f in files:
        try:
            load_clip(f, fe.sample_rate, fe.duration, trim=fe.trim)
        except AudioError as err:
            errors[f] = err
    good = [f for f in files if f not in errors]
    predictions = iter(model.predict_files(good) if good else [])
    return [errors[f] if f in errors else next(predictions) for f in files]


def predict_command(
    adapted: Path = typer.Argument(..., help="A model saved by `metavox adapt`."),
    # readable=False: an unreadable file is reported with the others, not a usage error
    files: list[Path] = typer.Argument(..., help="Audio files to classify.", readable=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """Print the recognised word and each word's probability for every file.

    A file that cannot be read is named on stderr with the reason (with --json: a line
    with its "error") and the others are still classified; the exit status is then 1.

    Example:

      metavox predict my_words.safetensors clip1.wav clip2.flac
    """
    from metavox.audio.io import AudioError
    from metavox.pipeline.enroll import load_adapted

    with user_errors():
        model = load_adapted(adapted)
        results = _classify(model, list(files))
    rows, failed = [], 0
    for f, res in zip(files, results, strict=True):
        if isinstance(res, AudioError):
            failed += 1
            if as_json:
                typer.echo(json.dumps({"file": str(f), "error": res.problem}))
            else:
                typer.echo(printable(f"error: {f}: {res.problem}"), err=True)
            continue
        word, probs = res
        if as_json:
            typer.echo(json.dumps({"file": str(f), "word": word, "probabilities": probs}))
        else:
            p = f"{probs[word]:.3f}" if word in probs else "-"
            rows.append([printable(f), word, p,
                         "  ".join(f"{k}:{v:.2f}" for k, v in probs.items())])
    if rows:
        print_table("predictions", ["file", "word", "p", "all words"], rows)
    if failed:
        raise typer.Exit(code=1)


def models_command() -> None:
    """List the registered backbones."""
    from metavox.models import list_models

    print_table("backbones", ["name", "description"], [[k, v] for k, v in list_models().items()])


def algorithms_command() -> None:
    """List the registered algorithms (the names `algorithm.name` takes)."""
    from metavox.meta import ALGORITHMS

    rows = [[name, spec.description] for name, spec in sorted(ALGORITHMS.items())]
    print_table("algorithms", ["name", "description"], rows)


def demo_command(
    out: Path = typer.Option(Path("metavox-demo"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="A one-minute smoke test of the "
                               "whole pipeline on a small corpus."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Use this synthetic corpus "
                                       "folder instead of the default cache."),
    seed: int = typer.Option(0, "--seed"),
    base: str = typer.Option(
        "auto", "--base", help="embedding (Google's speech embedding, frozen, with "
        "Proto-MAML; needs the pretrained extra), conv4 (learned from scratch), or auto: "
        "the embedding when installed."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """The main job: meta-train MAML on the built-in synthetic corpus, evaluate it on unseen
    words and speakers against the baselines, write a report, then enroll a few of the
    unseen words from two recordings each and recognise their other recordings.

    Examples:

      metavox demo

      metavox demo --quick --out /tmp/demo

      metavox demo --base conv4
    """
    from metavox.pipeline.demo import run_demo

    with user_errors(), progress_output(progress):
        result = run_demo(out, quick=quick, corpus=corpus, seed=seed, base=base,
                          progress=not quiet)
    typer.echo(result.table)
    typer.echo(f"\n{result.enrollment.summary()}")
    typer.echo(f"report: {result.report}  ({result.base} base, {result.seconds:.0f} s)")
