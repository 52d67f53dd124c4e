"""Start the real ``metavox serve`` for the tests that need a socket (the kill, load and
browser tests)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def start_server(run: Path, data: Path, *, log: Path | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """``metavox serve RUN --data DATA`` (uvicorn in a subprocess) on a free loopback port,
    once ``/health`` answers: ``(process, base url)``. Its output goes to ``log``, or, without
    one, its stderr to a pipe (the log lines some tests read)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    if log is not None:
        out = {"stdout": log.open("w"), "stderr": subprocess.STDOUT}
    proc = subprocess.Popen([sys.executable, "-m", "metavox", "serve", str(run), "--data",
                             str(data), "--port", str(port)], **out)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.25)
        if proc.poll() is not None:
            raise AssertionError(log.read_text() if log is not None
                                 else proc.stderr.read().decode())
    proc.kill()
    raise AssertionError("the server did not answer within 60 s")
