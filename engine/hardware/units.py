"""Byte-unit helpers shared by the hardware result types."""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


def gib(n_bytes: int | float) -> float:
    """``n_bytes`` in GiB, rounded to 2 decimals (for humans and JSON, never for arithmetic)."""
    return round(n_bytes / GIB, 2)
