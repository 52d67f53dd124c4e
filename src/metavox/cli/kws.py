"""``metavox listen``, ``export`` and ``streams``: keyword spotting with an adapted model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from metavox.cli.common import PROGRESS_HELP, QUIET_HELP, print_table, progress_output, user_errors


def listen_command(
    model: Path = typer.Argument(..., help="A model saved by `metavox adapt`."),
    audio: list[str] = typer.Argument(None, help="Audio files of any length, or - for raw "
                                      "PCM on standard input (see --pcm); none with --mic."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per detection."),
    pcm: str = typer.Option("int16", "--pcm", help="Standard input's sample format: int16 "
                            "or float32, mono, little-endian, at the model's sample rate."),
    hop: float | None = typer.Option(None, "--hop", help="Seconds between scores (default: "
                                     "80 ms for the speech embedding and the fusion, 100 "
                                     "ms otherwise)."),
    smooth: int = typer.Option(3, "--smooth", help="Average the scores over this many hops."),
    refractory: float | None = typer.Option(
        None, "--refractory", help="Seconds after a word's detection in which that word is "
        "not detected again (default: the model's window length)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Override the "
                                           "calibrated open-set threshold."),
    mic: bool = typer.Option(False, "--mic", help="Listen to a microphone (extra mic: "
                             "sounddevice on PortAudio) until Ctrl-C or --seconds."),
    device: str | None = typer.Option(None, "--device", help="With --mic: the input "
                                      "device's index or name (default: the system's)."),
    seconds: float | None = typer.Option(None, "--seconds", help="With --mic: stop after "
                                         "this many seconds."),
    every_hop: bool = typer.Option(False, "--every-hop", help="On the fusion base: run the "
                                   "full model on every hop instead of the cascade (the "
                                   "speech embedding first, the full model on candidate "
                                   "windows)."),
    cascade_far: float | None = typer.Option(
        None, "--cascade-far", help="On the fusion base: the fraction of negatives the "
        "cascade's first stage passes (default: the model's saved rule, else 0.1)."),
    decision: str = typer.Option("windows", "--decision", help="windows: score a sliding "
                                 "window every hop (words anywhere, inside sentences "
                                 "too); segments: one window per speech segment cut by "
                                 "energy, for words spoken on their own (fewer false "
                                 "accepts; --hop, --smooth, --refractory and the cascade "
                                 "do not apply)."),
) -> None:
    """Spot the enrolled words in recordings or a live stream: timestamped detections.

    Examples:

      metavox listen my_words.safetensors meeting.wav

      metavox listen my_words.safetensors commands.wav --decision segments

      arecord -f S16_LE -r 16000 -c 1 | metavox listen my_words.safetensors - --json

      metavox listen my_words.safetensors --mic --seconds 60
    """
    from dataclasses import replace

    from metavox.audio.mic import MicrophoneError, microphone_chunks
    from metavox.kws.spotter import SpotSettings, Spotter, file_chunks, pcm_chunks
    from metavox.pipeline.enroll import load_adapted

    with user_errors():
        if bool(audio) == mic:
            raise ValueError("give audio files (or - for standard input) or --mic, not both"
                             if mic else "nothing to listen to: give audio files, - for "
                             "standard input, or --mic")
        if not mic and (device is not None or seconds is not None):
            raise ValueError("--device and --seconds go with --mic")
        adapted = load_adapted(model)
        settings = SpotSettings(smooth=smooth, refractory=refractory, decision=decision)
        open_set = (adapted.open_set if threshold is None
                    else replace(adapted.open_set, threshold=threshold))
        rate = adapted.frontend.sample_rate
        step = None if hop is None else max(1, round(hop * rate))
        for source in audio or ["mic"]:
            spotter = Spotter(adapted, settings=settings, hop=step, open_set=open_set,
                              cascade=False if every_hop else None, cascade_far=cascade_far)
            if mic:
                chunks = microphone_chunks(rate, seconds=seconds, device=(
                    int(device) if device is not None and device.isdigit() else device))
            else:
                chunks = (pcm_chunks(sys.stdin.buffer, rate, dtype=pcm) if source == "-"
                          else file_chunks(source, rate))
            try:
                for d in spotter.run(chunks):
                    if as_json:
                        typer.echo(json.dumps({"source": source, **d.to_dict()}))
                    else:
                        typer.echo(f"{source}\t{d.time:8.2f} s\t{d.word}\t"
                                   f"(score {d.score:.3f})")
            except MicrophoneError as err:
                raise ValueError(str(err)) from None
            except KeyboardInterrupt:  # how a live listen ends
                if not mic:
                    raise


def export_command(
    model: Path = typer.Argument(..., help="A model saved by `metavox adapt`."),
    onnx_path: Path = typer.Option(..., "--onnx", help="Where to write the ONNX file."),
    quantize: bool = typer.Option(False, "--int8", help="Also write an int8 dynamically "
                                  "quantised copy beside it (NAME.int8.onnx)."),
    smooth: int = typer.Option(3, "--smooth", help="Stored for the program that runs it: "
                               "average the scores over this many hops."),
    refractory: float | None = typer.Option(
        None, "--refractory", help="Stored likewise: seconds after a word's detection in "
        "which that word is not detected again (default: the model's window length)."),
    cascade: bool = typer.Option(True, "--cascade/--no-cascade", help="On the fusion base: "
                                 "also write the cascade's stage-1 graph (NAME.stage1.onnx, "
                                 "named in the metadata)."),
    cascade_far: float | None = typer.Option(
        None, "--cascade-far", help="On the fusion base: the fraction of negatives the "
        "cascade's first stage passes (default: the model's saved rule, else 0.1)."),
) -> None:
    """Export an adapted model to ONNX: waveform in, word probabilities, score and
    unknown out (runs with onnxruntime alone; see examples/spot_onnx.py). On the fusion
    base it carries the stream cascade: a second, small graph for the first stage.

    Example:

      metavox export my_words.safetensors --onnx my_words.onnx --int8
    """
    from metavox.kws.export import ExportError, export_onnx, read_metadata
    from metavox.kws.spotter import SpotSettings
    from metavox.pipeline.enroll import load_adapted

    with user_errors():
        adapted = load_adapted(model)
        settings = SpotSettings(smooth=smooth, refractory=refractory)
        try:
            options = {"cascade": None if cascade else False, "cascade_far": cascade_far}
            path = export_onnx(adapted, onnx_path, settings=settings, **options)
            typer.echo(f"wrote {path} ({len(adapted.classes)} words: "
                       f"{', '.join(adapted.classes)})")
            first = read_metadata(path).get("cascade")
            if first:
                typer.echo(f"wrote {path.parent / first['stage1_file']} (the cascade's "
                           f"first stage, passing {first['far']:g} of the negatives)")
            if quantize:
                q = export_onnx(adapted, onnx_path.with_suffix(".int8.onnx"),
                                settings=settings, quantize=True, **options)
                typer.echo(f"wrote {q} (int8 weights)")
        except ExportError as err:
            raise ValueError(str(err)) from None


def streams_command(
    checkpoint: Path = typer.Argument(..., help="Meta-trained run folder or checkpoint."),
    episodes: int = typer.Option(12, "--episodes", help="Streams (one enrollment each)."),
    shots: str = typer.Option("1,3,5", "--shots", help="Enrollment clips per word."),
    ways: int = typer.Option(5, "--ways", help="Words enrolled per stream."),
    far: float = typer.Option(0.01, "--far", help="With --calibration clips: the operating "
                              "point reported (the rate of negative clips accepted)."),
    calibration: str = typer.Option("streams", "--calibration", help="streams: thresholds "
                                    "and background bank from negative streams, set on false "
                                    "accepts per hour (reported at 1 FA/h); clips: from "
                                    "isolated negative clips, set on --far."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: "
                                    "RUN/report/streams)."),
    rule: str = typer.Option("logit", "--rule", help="The open-set score of every method: "
                             "logit (the distance to the word's prototype; for a model "
                             "trained to reject, its learned output), background or "
                             "probability."),
    decision: str = typer.Option("windows", "--decision", help="windows: the sliding window "
                                 "every hop; segments: one window per speech segment cut "
                                 "by energy (needs --calibration clips); each as `metavox "
                                 "listen --decision` decides live."),
    kind: str = typer.Option("words", "--kind", help="The non-target speech: words "
                             "(clips of the corpus's other words) or sentences (continuous "
                             "sentences spoken by the synthetic voices; needs the synth "
                             "extra)."),
    negatives: Path | None = typer.Option(None, "--negatives", help="A folder of extra "
                                          "negative recordings (none of the test words) for "
                                          "the open-set calibration and background bank."),
    inner_lr: float | None = typer.Option(
        None, "--inner-lr", help="The meta-learner's test-time inner learning rate "
        "(default: the one chosen on validation, else the training config's)."),
    steps: int | None = typer.Option(
        None, "--steps", help="The meta-learner's test-time inner steps (default: chosen on "
        "validation, else the training config's eval_steps)."),
    cascade: str = typer.Option("", "--cascade", help="On the fusion base: stage-1 rates "
                                "of the cascade to score beside verifying every hop, e.g. "
                                "0.05,0.2 (each a row; 'hops verified' says its cost)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Keyword spotting on long test streams built from the run's test words: detection
    rate against false accepts per hour and per 100 non-target words, meta-learned model
    against the frozen-base nearest-centroid baseline, with a DET plot. When the run's
    split holds speakers out, every clip of the streams is by its test speakers.

    Example:

      metavox streams runs/sc-embedding-protomaml --episodes 12 --shots 1,3,5

      metavox streams runs/sc-maml --inner-lr 0.3 --steps 10

      metavox streams runs/sc-embedding-protomaml --kind sentences

      metavox streams runs/sc-fusion-protomaml --cascade 0.05,0.2 --calibration clips
    """
    from metavox.kws.report import run_streams
    from metavox.pipeline.select import AdaptationSettings

    with user_errors(), progress_output(progress):
        shot_list = [int(s) for s in shots.split(",") if s.strip()]
        report = run_streams(checkpoint, episodes=episodes, shots=shot_list, ways=ways,
                             far=far, calibration=calibration, out=out, progress=not quiet,
                             extra_negatives=negatives, decision=decision, rule=rule,
                             inner_lr=inner_lr, steps=steps, kind=kind,
                             cascade=tuple(float(f) for f in cascade.split(",") if f.strip()))
    rows = [[r["method"], str(r["shots"]), f"{100 * r['rate_at_1']:.1f}",
             f"{100 * r['rate_at_1_per_100_words']:.1f}",
             f"{100 * r['rate_at_far']:.1f}", f"{r['fa_per_hour_at_far']:.2f}",
             f"{r['fa_per_100_words_at_far']:.2f}", f"{r['latency_ms']:.0f}",
             f"{100 * r['verified_fraction']:.1f}"]
            for r in report["rows"]]
    point = "1 FA/h (streams)" if calibration == "streams" else f"far {far:g} (clips)"
    print_table("keyword spotting on streams",
                ["method", "shots", "DR% @<=1 FA/h", "DR% @<=1 FA/100 words",
                 f"DR% @{point}", "FA/h there", "FA/100 words there", "median latency ms",
                 "hops verified %"],
                rows)
    split = report["split"]
    if split["speakers_held_out"]:
        typer.echo(f"speakers held out: every clip by the run's {len(split['test_speakers'])} "
                   f"test speakers ({len(split['speakers_used'])} in the streams)")
    else:
        typer.echo(f"speakers not held out (split '{split['mode']}' holds out words only)")
    typer.echo(AdaptationSettings(**report["adaptation"]).describe())
    typer.echo(f"report: {report['path']}")


def serve_command(
    run: Path = typer.Argument(..., help="Meta-trained run folder or checkpoint to adapt."),
    data: Path = typer.Option(Path("metavox-service"), "--data", help="The service's state: "
                              "SQLite database, clips (FLAC), adapted models."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by "
                             "default; set --token for anything else)."),
    port: int = typer.Option(8000, "--port"),
    token: str | None = typer.Option(None, "--token", envvar="METAVOX_TOKEN",
                                     help="Require 'Authorization: Bearer TOKEN'."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads per request: "
                                "requests run side by side, one per core, so 1 serves the "
                                "most (measured: benchmarks/service_load.py)."),
) -> None:
    """Serve enrollment and spotting over HTTP: profiles, clips, adaptation,
    classification, ONNX download and a live WebSocket (OpenAPI at /docs).

    Example:

      metavox serve runs/sc-embedding-top1 --data ~/metavox-service --port 8000
    """
    from metavox.cli.common import fail

    try:
        import uvicorn

        from metavox.service.app import Service, create_app
    except ImportError:
        raise fail("the service needs the serve extra: pip install 'metavox[serve]'") from None
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        raise fail(f"binding to {host} exposes the service: set --token (or METAVOX_TOKEN)")
    import logging

    from metavox.storage import folder_lock

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    import torch

    torch.set_num_threads(threads)
    # one server per data folder: the lock goes with the process, also when it is killed
    with user_errors(), folder_lock(data):
        service = Service(run, data)
        # keep idle connections open longer than uvicorn's 5 s: a client reusing one just
        # as the server closes it gets a failed request (seen under load, 1 in 400)
        uvicorn.run(create_app(service, token=token), host=host, port=port, log_level="info",
                    timeout_keep_alive=75)
