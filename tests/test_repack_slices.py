"""Repacking a large weight slice by slice (bounded GIL holds) gives exactly the fields of one pass."""

from __future__ import annotations

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
    with np.errstate(invalid="ignore"):
        sliced = repack(raw, ggml_type, rows, cols)
    assert whole.qtype == sliced.qtype == name and len(whole.fields) == len(sliced.fields)
    for a, b in zip(whole.fields, sliced.fields, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous and b.flags.c_contiguous
        assert a.tobytes() == b.tobytes()  # bitwise (NaN payloads included)
        assert not np.shares_memory(b, raw)
