"""The main job's smoke test: `metavox demo --quick` end to end on a small synthetic corpus."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metavox.cli import app

pytest.importorskip("espeakng_loader", reason="the synth extra is not installed")


def test_demo_quick_writes_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("METAVOX_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| maml |" in res.output and "| protonet |" in res.output
    report = tmp_path / "demo" / "report"
    text = (report / "report.md").read_text()
    assert "never appear in meta-training" in text and "demonstration" in text
    metrics = json.loads((report / "metrics.json").read_text())
    methods = {s["method"] for s in metrics["scores"]}
    assert methods == {"maml", "protonet", "finetune-head", "finetune-all", "scratch"}
    # meta-test words and speakers were held out of meta-training
    split = json.loads((tmp_path / "demo" / "run" / "split.json").read_text())
    parts = split["parts"]
    assert not set(parts["test"]["labels"]) & set(parts["train"]["labels"])
    assert not set(parts["test"]["speakers"]) & set(parts["train"]["speakers"])
