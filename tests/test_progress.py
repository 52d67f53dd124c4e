"""Progress reports (issue 30): a bar on a terminal, plain lines at a steady interval
anywhere else or with --no-progress, nothing when disabled; never a redrawn bar in a file."""

from __future__ import annotations

import io
import re
import time

import pytest

from metavox.progress import Progress, duration, lines_only, progress_callback, progress_iter

LINE = re.compile(r"^features: \d+/40 clip \(\d+%\), [\d.]+ clip/s, \d+s elapsed, ~\S+ left$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_disabled_progress_prints_nothing():
    out = Terminal()
    with Progress(10, "x", enabled=False, stream=out) as p:
        p.update(5)
        p.set_postfix("loss 1")
    assert out.getvalue() == ""
    assert list(progress_iter(range(3), enabled=False)) == [0, 1, 2]


def test_a_file_gets_plain_lines_at_the_interval_and_one_at_the_end():
    out = io.StringIO()  # not a terminal: a log file, a pipe
    with Progress(40, "features", "clip", interval=0.0, stream=out) as p:
        assert not p.bar
        for _ in range(4):
            p.update(10)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5
    assert all(LINE.match(line) for line in lines[:4]), lines
    assert lines[0].startswith("features: 10/40 clip (25%)")
    assert lines[-1].startswith("features: 40/40 clip (100%)") and lines[-1].endswith("finished")
    # a long interval: only the closing line, which says where an interrupted phase stopped
    out = io.StringIO()
    p = Progress(40, "features", "clip", interval=3600, stream=out)
    p.set_postfix("loss 0.5")
    for _ in range(7):
        p.update()
    p.close()
    p.close()  # twice is fine
    (line,) = out.getvalue().splitlines()
    assert line.startswith("features: 7/40 clip (18%)") and line.endswith("stopped; loss 0.5")


def test_the_interval_is_steady(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = Progress(None, "train", interval=10.0, stream=out, initial=50)
    for _ in range(60):  # one step a second for a minute: a line every 10 s
        now[0] += 1.0
        p.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert lines[0] == "train: 60 it, 1 it/s, 10s elapsed"  # the rate counts from `initial`
    p.close()
    assert out.getvalue().splitlines()[-1] == "train: 110 it, 1 it/s, 1m00s elapsed, finished"


def test_a_terminal_gets_a_bar_unless_lines_only():
    out = Terminal()
    with Progress(5, "streams", "stream", stream=out) as p:
        assert p.bar
        p.update(5)
    assert "\r" in out.getvalue() and "5/5" in out.getvalue()
    out = Terminal()
    with lines_only(), Progress(5, "streams", "stream", stream=out, interval=0) as p:
        assert not p.bar
        p.update(5)
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines()[0].startswith("streams: 5/5 stream (100%)")
    with Progress(5, "x", stream=Terminal()) as p:  # outside: bars again
        assert p.bar


def test_iterator_and_callback_report_on_stderr(capsys):
    assert list(progress_iter(iter(range(4)), total=4, desc="items", interval=0)) == [0, 1, 2, 3]
    report = progress_callback("evaluate maml 1-shot", "batch", interval=3600)
    for done in (2, 4, 6):
        report(done, 6)
    assert progress_callback("x", enabled=False) is None
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("items: 1/4 it (25%)") and err[-2].endswith("finished")
    assert err[-1].startswith("evaluate maml 1-shot: 6/6 batch (100%)")


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (45, "45s"), (303, "5m03s"),
                                               (7620, "2h07m")])
def test_durations(seconds, text):
    assert duration(seconds) == text


def test_training_without_a_terminal_prints_plain_lines(tmp_path, capfd):
    """``metavox train``'s phases (here training and pre-training) into a file: plain
    lines, no bar redrawn."""
    from train_helpers import tiny_config, tone_manifest

    from metavox.pipeline.train import train

    cfg = tiny_config(tone_manifest(tmp_path / "tones", per=4), tmp_path / "run",
                      tmp_path / "cache", optim={"iterations": 4, "warmup": 1, "lr": 0.01,
                                                 "pretrain_iterations": 3},
                      validation={"every": 2, "episodes": 2, "checkpoint_every": 2})
    train(cfg, progress=True)
    err = capfd.readouterr().err
    assert not re.search(r"\r(meta-train|pre-train)", err)  # no bar redrawn
    assert re.search(r"^meta-train maml: 4/4 it \(100%\), .*finished; loss [\d.]+", err, re.M)
    assert re.search(r"^pre-train classifier: 3/3 it \(100%\)", err, re.M)
