"""Shared test set-up: an isolated KVANT_HOME, offscreen Qt, and the real default model."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

# Before anything imports Qt or reads KVANT_HOME.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _sweep_stale_homes(tmp: Path, max_age_s: float = 12 * 3600) -> None:
    """Homes of killed sessions (atexit never ran) older than ``max_age_s``; a session that young may
    still be running beside this one."""
    now = time.time()
    for old in tmp.glob("kvant-test-home-*"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)


_sweep_stale_homes(Path(tempfile.gettempdir()))
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="kvant-test-home-"))
os.environ["KVANT_HOME"] = str(_SESSION_HOME)
# The session home holds an assembled copy of the default model (242 MB); every run left one
# behind until 443 of them filled the disk. atexit also runs after a failed or interrupted session.
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)


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


@pytest.fixture(scope="module")
def launch():
    """The CUDA launch shapes of a GPU test module: Numba's simulator, switched on for that module only
    (tests.test_cuda_backend.cuda_test_device), unless KVANT_CUDA_TESTS=device."""
    from tests.test_cuda_backend import cuda_test_device

    with cuda_test_device() as shapes:
        yield shapes


@pytest.fixture(scope="module")
def reduce_launch(launch):
    """Several lanes and threads per row on the simulator too, so the block reductions and the
    grid-stride loops take their strides."""
    from engine.runtime.cuda import device as D

    return D.SIM_REDUCE_LAUNCH if launch is D.SIM_LAUNCH else launch
