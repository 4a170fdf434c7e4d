"""Repacking a large weight slice by slice (bounded GIL holds) gives exactly the fields of one pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.runtime.kernels import qmatmul
from engine.runtime.kernels.qmatmul import QTYPES, repack


@pytest.mark.parametrize("ggml_type", sorted(QTYPES))
def test_sliced_repack_is_identical(ggml_type, monkeypatch):
    name, bk, bb = QTYPES[ggml_type]
    rows, cols = 37, bk * (8 if bk > 1 else 256)
    raw = np.random.default_rng(ggml_type).integers(0, 256, rows * (cols // bk) * bb, dtype=np.uint8)
    with np.errstate(invalid="ignore"):  # random bytes: NaN scales
        whole = repack(raw, ggml_type, rows, cols)
    monkeypatch.setattr(qmatmul, "REPACK_SLICE_BYTES", (cols // bk) * bb * 5)  # 5 rows a slice, 8 slices
    done: list[tuple[int, int]] = []
    with np.errstate(invalid="ignore"):
        sliced = repack(raw, ggml_type, rows, cols, lambda a, b: done.append((a, b)))
    # every byte is reported copied once, slice after slice, in order (the loader releases them)
    assert done[0][0] == 0 and done[-1][1] == raw.size and len(done) == 8
    assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(done))
    assert whole.qtype == sliced.qtype == name and len(whole.fields) == len(sliced.fields)
    for a, b in zip(whole.fields, sliced.fields, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous and b.flags.c_contiguous
        assert a.tobytes() == b.tobytes()  # bitwise (NaN payloads included)
        assert not np.shares_memory(b, raw)
