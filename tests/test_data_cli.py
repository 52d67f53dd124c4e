"""``metavox data scan`` through typer's CliRunner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from data_paths import SHARED_DATA
from typer.testing import CliRunner

from metavox.cli import app

DATA = SHARED_DATA
FSDD = DATA / "fsdd"
runner = CliRunner()


def test_scan_fsdd_tables(shared_data) -> None:
    result = runner.invoke(app, ["data", "scan", str(FSDD), "--preset", "fsdd"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3000" in out and "8000 Hz" in out and "jackson" in out
    assert "clips per label" in out and "unreadable" in out


def test_scan_fsdd_json_detected_layout(shared_data) -> None:
    result = runner.invoke(app, ["data", "scan", str(FSDD), "--json", "--no-audio"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["clips"] == 3000 and report["labels"] == 10 and report["speakers"] == 6
    assert report["clips_per_label"]["7"] == 300 and report["source"].startswith("preset:fsdd")


def test_scan_pattern_and_manifest(shared_data, tmp_path: Path) -> None:
    pattern = "recordings/{label}_{speaker}_{n}.wav"
    result = runner.invoke(app, ["data", "scan", str(FSDD), "-p", pattern, "--json",
                                 "--no-audio"])
    assert result.exit_code == 0 and json.loads(result.output)["clips"] == 3000
    man = tmp_path / "m.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "speaker"])
        w.writerow(["recordings/0_george_0.wav", "0", "george"])
        w.writerow(["recordings/1_theo_3.wav", "1", "theo"])
    result = runner.invoke(app, ["data", "scan", str(FSDD), "--manifest", str(man), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["clips"] == 2 and report["sample_rates"] == {"8000": 2}


def test_scan_empty_folder_fails_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "scan", str(tmp_path)])
    assert result.exit_code != 0
    assert "no audio files" in result.output and str(tmp_path) in result.output


def test_scan_no_match_and_bad_options(shared_data, tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "scan", str(FSDD), "-p", "{label}/{speaker}_{n}.flac",
                                 "--no-audio"])
    assert result.exit_code == 0  # recordings/ is taken as the label: a match, if a poor one
    result = runner.invoke(app, ["data", "scan", str(FSDD), "-p", "{label}.wav"])
    assert result.exit_code == 1
    assert "matched no audio file" in result.output
    assert "recordings/{label}_{speaker}_{_}.wav" in result.output
    result = runner.invoke(app, ["data", "scan", str(FSDD), "-p", "x", "--preset", "fsdd"])
    assert result.exit_code == 1 and "at most one" in result.output
    result = runner.invoke(app, ["data", "scan", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "does not exist" in result.output
