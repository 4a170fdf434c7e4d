"""Numba options shared by every kernel (a constant; kernels stay pure functions)."""

from __future__ import annotations

# Importing engine._jit also points Numba's on-disk cache at a directory keyed by the kernels'
# sources (see there). fastmath stays off: the kernels must agree with their NumPy references.
from engine._jit import KERNEL

__all__ = ["KERNEL"]
