"""The numba kernel behind the memory-bandwidth probe (imported lazily: numba is slow to import).

It is a plain serial ``nogil`` loop; the all-threads number comes from running it on
slices of the buffer in ordinary Python threads. ``parallel=True`` is deliberately not
used: numba's default ``workqueue`` threading layer aborts the process when two threads
launch parallel kernels at once, and the GUI may run other numba work concurrently.
"""

from __future__ import annotations

import numba
import numpy as np

import engine._jit  # noqa: F401  (Numba's cache keyed by the kernels' sources, before any cache=True)


@numba.njit(cache=True, nogil=True)
def read_sum(buf: np.ndarray) -> np.uint64:  # pragma: no cover - compiled
    """Sum a 1-D uint64 array (LLVM vectorises the loop, so it runs at memory speed)."""
    total = np.uint64(0)
    for i in range(buf.shape[0]):
        total += buf[i]
    return total
