"""Where the tests find the real speech corpora: one setting, ``METAVOX_TEST_DATA``.

It names the folder that holds ``fsdd/`` and ``speech_commands_v2_test/`` (the layout of
``../shared/data``, which is the default). Tests that need the corpora take the
``shared_data`` fixture (``conftest.py``), which skips them with this reason when the
folder is absent, so a clone without the data still passes the test command.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAVOX_TEST_DATA") or REPO.parent / "shared" / "data")
MISSING = (f"real speech corpora not found at {SHARED_DATA} (set METAVOX_TEST_DATA to a "
           "folder holding fsdd/ and speech_commands_v2_test/)")
