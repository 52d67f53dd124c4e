"""Shared test fixtures and paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import fsdd_manifest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real speech corpora beside the repository (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared speech data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def manifest(shared_data, tmp_path_factory):
    """A manifest over a slice of the shared FSDD (the training tests' tiny corpus)."""
    return fsdd_manifest(shared_data, tmp_path_factory.mktemp("fsdd_slice"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A feature-cache folder shared by one test module's runs."""
    return tmp_path_factory.mktemp("feature_cache")
