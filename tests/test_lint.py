"""The code base stays ruff-clean (lint and format), checked in CI like any other test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: install the dev extra (pip install -e '.[dev]')")
    return [exe]


def test_ruff_check():
    result = subprocess.run([*_ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = subprocess.run(
        [*_ruff(), "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_session_removes_its_home(tmp_path):
    """A test session's KVANT_HOME (with its assembled 242 MB default model) is removed when the
    session ends: leaked homes once filled the disk and failed CI."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("KVANT_HOME", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_lint.py::test_ruff_check",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.glob("kvant-test-home-*")), "the test session left its KVANT_HOME behind"


def test_stale_test_homes_of_killed_sessions_are_swept(tmp_path):
    from tests.conftest import _sweep_stale_homes

    old, new = tmp_path / "kvant-test-home-old", tmp_path / "kvant-test-home-new"
    for d in (old, new):
        (d / "models").mkdir(parents=True)
    os.utime(old, (0, 0))  # a session killed long ago
    _sweep_stale_homes(tmp_path)
    assert not old.exists() and new.exists()  # a young one may still be running
