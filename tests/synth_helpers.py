"""Running code against eSpeak NG in a fresh process: the synthetic corpus's standalone
modules (``engine``, ``vocabulary``, ``speakers``) loaded from their files alone, without
the rest of metavox, so that the engine never loads into the test process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from metavox.data.synth import generate as gen

#: defines ``load(name)``: one of the synth package's standalone modules, from its file
_LOADER = (
    "import importlib.util, sys\n"
    "def load(name):\n"
    f"    spec = importlib.util.spec_from_file_location(name, {str(Path(gen.__file__).parent)!r}"
    " + '/' + name + '.py')\n"
    "    mod = importlib.util.module_from_spec(spec)\n"
    "    sys.modules[name] = mod\n"
    "    spec.loader.exec_module(mod)\n"
    "    return mod\n"
)


def run_isolated(body: str, timeout: float = 120) -> str:
    """The standard output of ``body`` run in a new interpreter after the loader (``load``
    is defined); a failure shows the end of its standard error."""
    res = subprocess.run([sys.executable, "-c", _LOADER + body], capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout
