"""Lookup tables of the grid IQ types, built like llama.cpp's ``ggml_quantize_init``.

``iq2xs_init_impl`` / ``iq3xs_init_impl`` (ggml/src/ggml-quants.c) expand a compact grid (see
:mod:`engine.quant.iq_grids`) into:

- ``grid``: the points as int8 ``2*l + 1`` per element (8 elements for IQ2/IQ1, 4 for IQ3);
- ``kmap``: for every packed level vector ``u`` (2 or 3 bits per element) the grid index when
  ``u`` is a grid point, else ``-(offset + 1)`` into ``neighbours``;
- ``neighbours``: per off-grid ``u`` a count ``n`` followed by ``n`` grid indices: every point whose
  squared distance to ``u`` is among the ``nwant`` smallest distinct distances, ordered by
  (distance, index) -- the order of C's ``qsort`` with its total comparator.

Everything is built once per grid, lazily, and returned read-only (``functools.cache``).  The
dequantization grids of ggml-common.h are derived from the same compact tables.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit

from engine.quant import iq_grids

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

# type name -> (compact table, bits per level, elements per point, nwant, kmap size)
_QUANT_GRIDS = {
    "IQ2_XXS": ("KGRID_2BIT_256", 2, 8, 2, 43692),
    "IQ2_XS": ("KGRID_2BIT_512", 2, 8, 2, 43692),
    "IQ2_S": ("KGRID_2BIT_1024", 2, 8, 1, 43692),
    "IQ1_S": ("KGRID_1BIT_2048", 2, 8, 3, 43692),
    "IQ1_M": ("KGRID_1BIT_2048", 2, 8, 3, 43692),
    "IQ3_XXS": ("KGRID_256", 3, 4, 2, 4096),
    "IQ3_S": ("KGRID_512", 3, 4, 3, 4096),
}

# compact table -> byte value of each level in ggml-common.h's dequantization grid
_DEQ_MAP = {
    "KGRID_2BIT_256": (0x08, 0x19, 0x2B),
    "KGRID_2BIT_512": (0x08, 0x19, 0x2B),
    "KGRID_2BIT_1024": (0x08, 0x19, 0x2B),
    "KGRID_1BIT_2048": (-1, 0, 1),
    "KGRID_256": (0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3E),
    "KGRID_512": (1, 3, 5, 7, 9, 11, 13, 15),
}


class QuantTables(NamedTuple):
    grid: np.ndarray  # int8 (grid_size, per): 2*l + 1
    kmap: np.ndarray  # int32 (kmap_size,)
    neighbours: np.ndarray  # uint16


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@functools.cache
def compact_grid(table: str) -> np.ndarray:
    """One compact grid table of :mod:`engine.quant.iq_grids` as read-only uint16."""
    return _readonly(np.frombuffer(bytes.fromhex(getattr(iq_grids, table)), dtype="<u2").astype(np.uint16))


def _levels(table: str, bits: int, per: int) -> np.ndarray:
    c = compact_grid(table).astype(np.int64)
    shifts = bits * np.arange(per)
    return (c[:, None] >> shifts) & ((1 << bits) - 1)


@njit(**_JIT)
def _build_neighbours(grid, kmap, bits, nwant):
    """The neighbour lists of iq2xs_init_impl / iq3xs_init_impl; fills kmap for off-grid entries."""
    ngrid, per = grid.shape
    kmap_size = kmap.shape[0]
    mask = (1 << bits) - 1
    d2 = np.empty(ngrid, np.int64)
    pos = np.empty(per, np.int64)
    wanted = np.empty(nwant, np.int64)
    # pass 1: sizes
    total = 0
    for i in range(kmap_size):
        if kmap[i] >= 0:
            continue
        total += 1
        for k in range(per):
            pos[k] = 2 * ((i >> (bits * k)) & mask) + 1
        for j in range(ngrid):
            s = 0
            for k in range(per):
                t = np.int64(grid[j, k]) - pos[k]
                s += t * t
            d2[j] = s
        nd = _smallest_distinct(d2, wanted)
        for j in range(ngrid):
            for q in range(nd):
                if d2[j] == wanted[q]:
                    total += 1
                    break
    out = np.zeros(total, np.uint16)
    counter = 0
    for i in range(kmap_size):
        if kmap[i] >= 0:
            continue
        for k in range(per):
            pos[k] = 2 * ((i >> (bits * k)) & mask) + 1
        for j in range(ngrid):
            s = 0
            for k in range(per):
                t = np.int64(grid[j, k]) - pos[k]
                s += t * t
            d2[j] = s
        nd = _smallest_distinct(d2, wanted)
        kmap[i] = -(counter + 1)
        start = counter
        counter += 1
        for q in range(nd):  # sorted by (distance, index)
            for j in range(ngrid):
                if d2[j] == wanted[q]:
                    out[counter] = j
                    counter += 1
        out[start] = counter - start - 1
    return out


@njit(**_JIT)
def _smallest_distinct(d2, wanted):
    """The len(wanted) smallest distinct values of d2, ascending; returns how many exist."""
    nd = 0
    prev = -1
    for q in range(wanted.shape[0]):
        best = -1
        for j in range(d2.shape[0]):
            v = d2[j]
            if v > prev and (best < 0 or v < best):
                best = v
        if best < 0:
            break
        wanted[q] = best
        nd += 1
        prev = best
    return nd


@functools.cache
def quant_tables(qtype: str) -> QuantTables:
    """grid / kmap / neighbours of one grid IQ type, exactly as ggml_quantize_init builds them."""
    table, bits, per, nwant, kmap_size = _QUANT_GRIDS[qtype]
    lv = _levels(table, bits, per)
    grid = (2 * lv + 1).astype(np.int8)
    kmap = np.full(kmap_size, -1, np.int32)
    index = (lv << (bits * np.arange(per))).sum(axis=1)
    kmap[index] = np.arange(len(index), dtype=np.int32)
    neighbours = _build_neighbours(grid, kmap, bits, nwant)
    return QuantTables(_readonly(grid), _readonly(kmap), _readonly(neighbours))


@njit(**_JIT)
def _fill_blocks(grid, kmap, neighbours, kblk, nbg):
    """Copy each neighbour list's grid points into 8-candidate blocks, element-major inside a block."""
    b = 0
    for u in range(kmap.shape[0]):
        if kmap[u] >= 0:
            continue
        off = -kmap[u] - 1
        n = np.int64(neighbours[off])
        kblk[u] = b
        for j in range(n):
            g = np.int64(neighbours[off + 1 + j])
            for i in range(grid.shape[1]):
                nbg[b + j // 8, i, j % 8] = grid[g, i]
        b += (n + 7) // 8
    return b


@functools.cache
def neighbour_blocks(qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour lists of :func:`quant_tables` laid out for a lane-per-candidate search.

    Returns ``(kblk, nbg)``: for an off-grid ``u``, its list's candidates ``j`` (in list order) are
    ``nbg[kblk[u] + j // 8, :, j % 8]`` (the grid point, int8 ``2*l + 1``); padding lanes hold 0.
    """
    t = quant_tables(qtype)
    offs = -t.kmap[t.kmap < 0].astype(np.int64) - 1
    nblocks = int(((t.neighbours[offs].astype(np.int64) + 7) // 8).sum())
    kblk = np.full(t.kmap.shape[0], -1, np.int32)
    nbg = np.zeros((nblocks, t.grid.shape[1], 8), np.int8)
    _fill_blocks(t.grid, t.kmap, t.neighbours, kblk, nbg)
    return _readonly(kblk), _readonly(nbg)


@functools.cache
def dequant_grid(table: str) -> np.ndarray:
    """ggml-common.h's dequantization grid of a compact table as float32 (grid_size, per)."""
    bits, per = (3, 4) if table in ("KGRID_256", "KGRID_512") else (2, 8)
    values = np.array(_DEQ_MAP[table], dtype=np.float32)
    return _readonly(values[_levels(table, bits, per)])


@functools.cache
def ksigns() -> np.ndarray:
    """ksigns_iq2xs: 7 sign bits plus an 8th that makes the parity even."""
    i = np.arange(128)
    parity = np.array([bin(v).count("1") & 1 for v in range(128)])
    return _readonly((i | (parity << 7)).astype(np.uint8))
