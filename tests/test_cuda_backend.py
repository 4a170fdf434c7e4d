"""Shared set-up of the CUDA tests: Numba's CUDA simulator unless KVANT_CUDA_TESTS=device."""

from __future__ import annotations

import contextlib
import os

import pytest


@contextlib.contextmanager
def cuda_test_device():
    """The launch shapes of the device the tests run on (simulator by default).  The simulator is
    switched on for a test module only (a module-scoped fixture), so other tests never see GPU
    offload as available."""
    with pytest.MonkeyPatch.context() as mp:
        if os.environ.get("KVANT_CUDA_TESTS") != "device":
            mp.setenv("NUMBA_ENABLE_CUDASIM", "1")
        from engine.runtime.cuda.backend import availability

        av = availability()
        assert av.available, av.reason
        from engine.runtime.cuda import device as D

        yield D.SIM_LAUNCH if av.simulator else D.GPU_LAUNCH
