"""The benchmark scripts run end to end on small settings (no timing is asserted here:
speed goals are read from their full runs, see docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_stream_speed_prints_real_time_factors_and_latency(shared_data):
    """benchmarks/stream_speed.py on 3 s of audio, one repeat: every real-time factor, and
    latencies of detected words on protocol streams of the real corpus."""
    pytest.importorskip("onnx", reason="needs metavox[pretrained]")
    out = subprocess.run([sys.executable, str(BENCH / "stream_speed.py"), "--seconds", "3",
                          "--repeats", "1", "--data", str(shared_data)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for what in ("spotter", "incremental", "recompute"):
        (row,) = [line for line in lines if re.fullmatch(rf"{what}\s+[0-9.]+", line)]
        assert 0 < float(row.split()[-1]) < 10
    (lat,) = [line for line in lines if line.startswith("latency")]
    found = re.search(r"(\d+) hits: median (\d+) ms", lat)
    assert found and int(found[1]) >= 20, lat
