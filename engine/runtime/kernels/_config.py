"""Numba options shared by every kernel (a constant; kernels stay pure functions)."""

from __future__ import annotations

# fastmath stays off: the kernels must agree with their NumPy references to float rounding.
KERNEL = {"cache": True, "nogil": True}
