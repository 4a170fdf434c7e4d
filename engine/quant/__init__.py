"""Quantize and dequantize GGML tensor data, bit-exact with llama.cpp.

Public API:

- :func:`quantize` ``(x, qtype, imatrix=None)``: float32 rows -> the exact bytes llama.cpp's
  ``ggml_quantize_chunk`` writes, as uint8 of shape ``(rows, row_bytes)``.
- :func:`dequantize` ``(raw, qtype, shape)``: bytes -> float32 of ``shape``, exactly what
  ``gguf.quants.dequantize`` returns.
- :func:`supported`: one :class:`TypeSupport` per GGML type this package knows.

Every problem with the arguments raises :class:`engine.errors.QuantError`.

The type table merges the ``FORMATS`` of the family modules (see ``engine/quant/format.py``).
Every type has its own Numba dequantizer; NVFP4 is dequantize-only (llama.cpp's quantizer for it
is not one of the types this package writes yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from engine.errors import QuantError
from engine.quant import floats, iquants, kquants, legacy, mxfp4, nonlinear, ternary
from engine.quant._common import check_imatrix, check_rows
from engine.quant.format import QuantFormat

__all__ = ["QuantFormat", "TypeSupport", "dequantize", "format_of", "quantize", "supported"]


def _family_modules() -> list:
    return [floats, legacy, kquants, nonlinear, ternary, mxfp4, iquants]


def _build_table() -> Mapping[str, QuantFormat]:
    table: dict[str, QuantFormat] = {}
    seen: set[str] = set()
    for mod in _family_modules():
        for name, fmt in mod.FORMATS.items():
            if name in seen:
                raise RuntimeError(f"GGML type {name} is defined by two quantization family modules")
            if name != fmt.name:
                raise RuntimeError(f"{mod.__name__}.FORMATS key {name} names format {fmt.name}")
            seen.add(name)
            table[name] = fmt
    return MappingProxyType(dict(sorted(table.items(), key=lambda kv: kv[1].ggml_id)))


FORMATS: Mapping[str, QuantFormat] = _build_table()


@dataclass(frozen=True, slots=True)
class TypeSupport:
    """What this package can do with one GGML type."""

    name: str
    ggml_id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block
    bpw: float  # bits per weight
    can_quantize: bool
    can_dequantize: bool
    needs_imatrix: bool  # llama.cpp refuses to quantize without an importance matrix
    uses_imatrix: bool  # an importance matrix changes the result


def supported() -> list[TypeSupport]:
    """Every GGML type known here, by ggml id."""
    return [
        TypeSupport(
            name=f.name,
            ggml_id=f.ggml_id,
            block_size=f.block_size,
            type_size=f.type_size,
            bpw=f.bits_per_weight,
            can_quantize=f.quantize is not None,
            can_dequantize=True,
            needs_imatrix=f.needs_imatrix,
            uses_imatrix=f.uses_imatrix,
        )
        for f in FORMATS.values()
    ]


def format_of(qtype: object) -> QuantFormat:
    """The :class:`QuantFormat` of a type given by name (any case), ggml id or gguf enum."""
    if isinstance(qtype, str):
        fmt = FORMATS.get(qtype.upper())
    elif isinstance(qtype, int | np.integer):  # also gguf.GGMLQuantizationType (an IntEnum)
        fmt = next((f for f in FORMATS.values() if f.ggml_id == int(qtype)), None)
    else:
        raise QuantError(f"A quantization type must be a name like 'Q4_K' or a ggml id, got {qtype!r}.")
    if fmt is None:
        raise QuantError(f"Unknown quantization type {qtype!r}; known types: {', '.join(FORMATS)}.")
    return fmt


def quantize(x: np.ndarray, qtype: object, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 rows (rows x n_per_row) exactly as llama.cpp's ggml_quantize_chunk.

    ``imatrix``: optional importance matrix, one non-negative float per column.  Returns uint8
    of shape ``(rows, n_per_row // block_size * type_size)``.
    """
    fmt = format_of(qtype)
    if fmt.quantize is None:
        raise QuantError(f"Quantizing to {fmt.name} is not supported yet (it can only be dequantized).")
    x = check_rows(x, fmt.name, fmt.block_size, finite=not fmt.checks_finite)
    im = None if imatrix is None else check_imatrix(imatrix, fmt.name, x.shape[1])
    if im is None and fmt.needs_imatrix:
        raise QuantError(
            f"Missing importance matrix for {fmt.name}: it is a very low-bit type and llama.cpp refuses "
            f"to quantize it without one (the result would be garbage). Pass imatrix=."
        )
    out = fmt.quantize(x, im)
    expected = (x.shape[0], x.shape[1] // fmt.block_size * fmt.type_size)
    if out.dtype != np.uint8 or out.shape != expected:  # a family-module bug, not a user error
        raise RuntimeError(
            f"{fmt.name} quantizer returned {out.dtype} {out.shape}, expected uint8 {expected}"
        )
    return out


def _as_bytes(raw: object, name: str) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
    except TypeError as e:
        raise QuantError(
            f"Cannot dequantize {name}: raw data must be a bytes-like object or NumPy array, "
            f"got {type(raw).__name__}."
        ) from e


def dequantize(raw: object, qtype: object, shape: tuple[int, ...] | int) -> np.ndarray:
    """Dequantize ``raw`` bytes of type ``qtype`` to float32 of the logical ``shape`` (..., n_per_row)."""
    fmt = format_of(qtype)
    try:
        shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise QuantError(
            f"Cannot dequantize {fmt.name}: shape must be a tuple of ints, got {shape!r}."
        ) from e
    if not shape or any(s < 0 for s in shape):
        raise QuantError(f"Cannot dequantize {fmt.name}: invalid shape {shape}.")
    if shape[-1] % fmt.block_size:
        raise QuantError(
            f"Cannot dequantize {fmt.name}: row length {shape[-1]} is not a multiple of the block "
            f"size {fmt.block_size}."
        )
    data = _as_bytes(raw, fmt.name)
    n_elems = int(np.prod(shape, dtype=np.int64))
    n_blocks = n_elems // fmt.block_size
    if data.size != n_blocks * fmt.type_size:
        raise QuantError(
            f"Cannot dequantize {fmt.name}: shape {shape} needs {n_blocks * fmt.type_size} bytes "
            f"({n_blocks} blocks of {fmt.type_size}), got {data.size}."
        )
    if n_blocks == 0:
        return np.zeros(shape, dtype=np.float32)
    y = fmt.dequantize(data.reshape(n_blocks, fmt.type_size))
    return np.asarray(y, dtype=np.float32).reshape(shape)
