"""Shared test fixtures and paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_paths import MISSING, SHARED_DATA
from train_helpers import fsdd_manifest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real speech corpora (``$METAVOX_TEST_DATA``, default ``../shared/data``); the
    test is skipped, with the reason, when they are absent."""
    if not all((SHARED_DATA / c).is_dir() for c in ("fsdd", "speech_commands_v2_test")):
        pytest.skip(MISSING)
    return SHARED_DATA


@pytest.fixture(scope="module")
def manifest(shared_data, tmp_path_factory):
    """A manifest over a slice of the shared FSDD (the training tests' tiny corpus)."""
    return fsdd_manifest(shared_data, tmp_path_factory.mktemp("fsdd_slice"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A feature-cache folder shared by one test module's runs."""
    return tmp_path_factory.mktemp("feature_cache")
