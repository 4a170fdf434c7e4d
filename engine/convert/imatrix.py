"""Importance matrices in llama.cpp's formats.

GGUF format (``llama-imatrix`` today): metadata ``general.type = "imatrix"``,
``imatrix.datasets`` (array of strings), ``imatrix.chunk_count`` and ``imatrix.chunk_size``
(u32); per weight tensor ``W`` two F32 tensors, sorted by name: ``W.in_sum2`` (ne = [n_per_row,
n_mat]: the sum over tokens of the squared activations entering each column) and ``W.counts``
(ne = [1, n_mat]: how many tokens were summed, per matrix; n_mat > 1 for stacked experts).
The per-column importance llama-quantize uses is ``in_sum2 / counts`` (1 where a count is 0).

Legacy ``.dat`` format (read only): ``i32 n_entries``, then per entry ``i32 len, name, i32 ncall,
i32 nval, f32 values[nval]``; optionally ``i32 last_call, i32 len, dataset``. Values are stored
scaled by ncall and divided back on loading (as llama-quantize does).

Computing an imatrix needs activation hooks in the inference engine: :func:`compute_imatrix`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.errors import GGUFError, KvantError
from engine.gguf import MetadataValue, TensorSpec, open_gguf, write_gguf_sync

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"


@dataclass
class ImatrixEntry:
    sums: np.ndarray  # float32 (n_mat, n_per_row)
    counts: np.ndarray  # float32 (n_mat,)

    def values(self) -> np.ndarray:
        """The flattened per-column importance (n_mat * n_per_row), as llama-quantize computes it."""
        out = np.ones_like(self.sums, dtype=np.float32)
        for j, c in enumerate(self.counts):
            c = np.float32(c)
            if c > 0:
                out[j] = self.sums[j] / c
        return out.reshape(-1)


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def values(self, name: str) -> np.ndarray | None:
        e = self.entries.get(name)
        return None if e is None else e.values()

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)


def load_imatrix(path: str | Path) -> Imatrix:
    """Load an imatrix in GGUF or legacy .dat format (detected from the magic)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise KvantError(f"{path}: cannot read the importance matrix: {err.strerror or err}") from None
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_legacy(path)


def _load_gguf(path: Path) -> Imatrix:
    with open_gguf(path) as m:
        im = Imatrix(
            datasets=list(m.get(KEY_DATASETS, []) or []),
            chunk_count=int(m.get(KEY_CHUNK_COUNT, 0) or 0),
            chunk_size=int(m.get(KEY_CHUNK_SIZE, 0) or 0),
        )
        names = {t.name for t in m.tensors}
        for t in m.tensors:
            if not t.name.endswith(SUFFIX_SUMS):
                continue
            base = t.name[: -len(SUFFIX_SUMS)]
            if base + SUFFIX_COUNTS not in names:
                raise GGUFError(f"{path}: imatrix entry {base} has sums but no counts")
            sums = _f32(m, t.name)
            counts = _f32(m, base + SUFFIX_COUNTS).reshape(-1)
            n_mat = counts.size
            if n_mat == 0 or sums.size % n_mat:
                raise GGUFError(f"{path}: imatrix entry {base}: {sums.size} sums do not fit {n_mat} matrices")
            im.entries[base] = ImatrixEntry(sums.reshape(n_mat, -1).copy(), counts.copy())
    if not im.entries:
        raise GGUFError(f"{path}: not an importance matrix (no *{SUFFIX_SUMS} tensors)")
    return im


def _f32(m, name: str) -> np.ndarray:
    t = m.tensor(name)
    if t.type != T.F32:
        raise GGUFError(f"imatrix tensor {name} is {t.type_name}, expected F32")
    return np.asarray(m.array(name), dtype=np.float32)


def _load_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise GGUFError(f"{path}: truncated legacy imatrix at byte {pos}")
        vals = struct.unpack_from(fmt, data, pos)
        pos += size
        return vals

    (n,) = take("<i")
    if n < 1 or n > len(data) // 12:
        raise GGUFError(f"{path}: not an importance matrix (bad entry count {n})")
    im = Imatrix(legacy=True)
    for _ in range(n):
        (ln,) = take("<i")
        if ln <= 0 or pos + ln > len(data):
            raise GGUFError(f"{path}: bad name length {ln} at byte {pos}")
        name = data[pos : pos + ln].decode("utf-8", errors="replace")
        pos += ln
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise GGUFError(f"{path}: bad value count {nval} for {name}")
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        # legacy semantics: value = stored / ncall (stored as is when ncall == 0)
        if ncall > 0:
            im.entries[name] = ImatrixEntry(vals.reshape(1, -1).copy(), np.array([ncall], np.float32))
        else:
            im.entries[name] = ImatrixEntry(vals.reshape(1, -1).copy(), np.array([1.0], np.float32))
    if pos + 4 <= len(data):
        (im.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (ln,) = take("<i")
            if 0 < ln <= len(data) - pos:
                im.datasets = [data[pos : pos + ln].decode("utf-8", errors="replace")]
    return im


def save_imatrix(im: Imatrix, path: str | Path) -> Path:
    """Write ``im`` in llama.cpp's GGUF imatrix format."""
    meta = {
        "general.type": MetadataValue(V.STRING, "imatrix"),
        KEY_DATASETS: MetadataValue(V.ARRAY, list(im.datasets), V.STRING),
        KEY_CHUNK_COUNT: MetadataValue(V.UINT32, int(im.chunk_count)),
        KEY_CHUNK_SIZE: MetadataValue(V.UINT32, int(im.chunk_size)),
    }
    specs: list[TensorSpec] = []
    data: dict[str, np.ndarray] = {}
    for name in sorted(im.entries):
        e = im.entries[name]
        sums = np.ascontiguousarray(e.sums, dtype=np.float32)
        counts = np.ascontiguousarray(e.counts, dtype=np.float32).reshape(-1)
        specs.append(TensorSpec(name + SUFFIX_SUMS, int(T.F32), (sums.shape[1], sums.shape[0])))
        specs.append(TensorSpec(name + SUFFIX_COUNTS, int(T.F32), (1, counts.size)))
        data[name + SUFFIX_SUMS] = sums
        data[name + SUFFIX_COUNTS] = counts
    return write_gguf_sync(path, meta, specs, lambda s: data[s.name])[0]


def compute_imatrix(*_args, **_kwargs) -> Imatrix:
    """Compute an importance matrix by running calibration text through the model.

    TODO: needs per-matmul activation hooks in the inference engine (engine/models), which do not
    exist yet; until then load one made by ``llama-imatrix`` with :func:`load_imatrix`.
    """
    raise KvantError(
        "Computing an importance matrix is not implemented yet (the inference engine has no activation "
        "hooks); make one with llama.cpp's llama-imatrix and pass it with --imatrix."
    )
