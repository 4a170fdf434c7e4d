"""Shared test set-up: an isolated KVANT_HOME, offscreen Qt, and the real default model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports Qt or reads KVANT_HOME.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="kvant-test-home-"))
os.environ["KVANT_HOME"] = str(_SESSION_HOME)


@pytest.fixture(scope="session")
def kvant_paths():
    from engine.paths import KvantPaths

    return KvantPaths(_SESSION_HOME).ensure()


@pytest.fixture(scope="session")
def default_model(kvant_paths) -> Path:
    """The real default model (Gemma 3 270M Q4_K_M), assembled once per test session."""
    from engine.library import ensure_default_model

    gen = ensure_default_model(kvant_paths)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return Path(stop.value.path)
