"""Streaming GGUF writer.

Tensors are declared first (name, shape, type) so the header can be written, then their
data is pulled one tensor at a time from a callback: memory stays bounded by the largest
tensor. Output goes to temporary files beside the target and is renamed only when every
shard is complete; a failure or a cancel removes the temporaries and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGUFValueType

from engine.errors import DiskSpaceError, GGUFError
from engine.gguf.constants import (
    DEFAULT_ALIGNMENT,
    KEY_ALIGNMENT,
    KEY_SPLIT_COUNT,
    KEY_SPLIT_NO,
    KEY_SPLIT_TENSORS,
    MAGIC,
    MAX_DIMS,
    MAX_NAME_BYTES,
    NUMPY_DTYPES,
    SCALAR_FORMATS,
    SPLIT_NAME_PATTERN,
    align_up,
    block_geometry,
    type_name,
)
from engine.gguf.reader import MetadataValue
from engine.progress import CancelToken, Progress

_CHUNK = 16 << 20  # bytes written between cancel checks
_DISK_MARGIN = 64 << 20  # keep this much free beyond the output's size


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor to write: ``dims`` in GGUF order (contiguous dimension first)."""

    name: str
    type: int
    dims: tuple[int, ...]

    @classmethod
    def from_shape(cls, name: str, shape: Sequence[int], type_id: int) -> TensorSpec:
        return cls(name, int(type_id), tuple(int(d) for d in reversed(tuple(shape))))

    @property
    def nbytes(self) -> int:
        geometry = block_geometry(self.type)
        if geometry is None:
            raise GGUFError(f"tensor {self.name!r}: unknown tensor type id {self.type}")
        block, size = geometry
        n = 1
        for d in self.dims:
            n *= d
        if self.dims[0] % block:
            raise GGUFError(
                f"tensor {self.name!r}: row length {self.dims[0]} is not a multiple of the "
                f"{type_name(self.type)} block size {block}"
            )
        return n // block * size


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    """Start a new shard after ``max_tensors`` tensors or before exceeding ``max_bytes`` of data."""

    max_tensors: int | None = None
    max_bytes: int | None = None


def metadata_value(value: Any, vtype: GGUFValueType | None = None) -> MetadataValue:
    """Wrap a Python value as a :class:`MetadataValue`, inferring the GGUF type if not given."""
    if isinstance(value, MetadataValue):
        return value
    if vtype is None:
        vtype = _infer_type(value)
    if vtype != GGUFValueType.ARRAY:
        return MetadataValue(vtype, value)
    items = list(value) if not isinstance(value, np.ndarray) else value
    if isinstance(items, np.ndarray):
        item_type = _numpy_item_type(items.dtype)
        return MetadataValue(vtype, items, item_type)
    if not items:
        return MetadataValue(vtype, np.zeros(0, np.int32), GGUFValueType.INT32)
    item_type = _infer_type(items[0])
    if item_type == GGUFValueType.STRING:
        return MetadataValue(vtype, [str(s) for s in items], item_type)
    if item_type == GGUFValueType.ARRAY:
        return MetadataValue(vtype, [metadata_value(v) for v in items], item_type)
    if item_type == GGUFValueType.INT32 and any(isinstance(v, float) for v in items):
        item_type = GGUFValueType.FLOAT32
    return MetadataValue(vtype, np.asarray(items, dtype=NUMPY_DTYPES[item_type]), item_type)


def _infer_type(value: Any) -> GGUFValueType:
    if isinstance(value, bool | np.bool_):
        return GGUFValueType.BOOL
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, int | np.integer):
        v = int(value)
        if -(2**31) <= v < 2**31:
            return GGUFValueType.INT32
        return GGUFValueType.INT64 if v < 2**63 else GGUFValueType.UINT64
    if isinstance(value, float | np.floating):
        return GGUFValueType.FLOAT32
    if isinstance(value, list | tuple | np.ndarray):
        return GGUFValueType.ARRAY
    raise GGUFError(f"cannot store a value of type {type(value).__name__} in GGUF metadata")


def _numpy_item_type(dtype: np.dtype) -> GGUFValueType:
    for vt, dt in NUMPY_DTYPES.items():
        if np.dtype(dt) == dtype.newbyteorder("<") or np.dtype(dt) == dtype:
            return vt
    raise GGUFError(f"cannot store a NumPy array of {dtype} in GGUF metadata")


# --- encoding ---------------------------------------------------------------------------------


def _encode_string(s: str) -> bytes:
    raw = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(mv: MetadataValue, with_type: bool) -> bytes:
    head = struct.pack("<I", mv.type) if with_type else b""
    if mv.type == GGUFValueType.STRING:
        return head + _encode_string(mv.value)
    if mv.type != GGUFValueType.ARRAY:
        return head + struct.pack("<" + SCALAR_FORMATS[mv.type], mv.value)
    assert mv.item_type is not None
    items = mv.value
    head += struct.pack("<IQ", mv.item_type, len(items))
    if mv.item_type == GGUFValueType.STRING:
        return head + b"".join(_encode_string(s) for s in items)
    if mv.item_type == GGUFValueType.ARRAY:
        return head + b"".join(_encode_value(v, with_type=False) for v in items)
    return head + np.ascontiguousarray(items, dtype=NUMPY_DTYPES[mv.item_type]).tobytes()


def encode_header(
    metadata: Mapping[str, MetadataValue], tensors: Sequence[TensorSpec], alignment: int, version: int = 3
) -> tuple[bytes, list[int]]:
    """The header bytes (padded to ``alignment``) and each tensor's data offset."""
    parts = [MAGIC, struct.pack("<IQQ", version, len(tensors), len(metadata))]
    for key, mv in metadata.items():
        parts.append(_encode_string(key))
        parts.append(_encode_value(mv, with_type=True))
    offsets: list[int] = []
    offset = 0
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise GGUFError(f"duplicate tensor name {t.name!r}")
        seen.add(t.name)
        if len(t.name.encode("utf-8")) > MAX_NAME_BYTES:
            raise GGUFError(f"tensor name {t.name!r} is longer than {MAX_NAME_BYTES} bytes")
        if not 1 <= len(t.dims) <= MAX_DIMS:
            raise GGUFError(f"tensor {t.name!r} has {len(t.dims)} dimensions (1 to {MAX_DIMS} allowed)")
        offsets.append(offset)
        parts.append(_encode_string(t.name))
        parts.append(struct.pack(f"<I{len(t.dims)}QIQ", len(t.dims), *t.dims, t.type, offset))
        offset = align_up(offset + t.nbytes, alignment)
    header = b"".join(parts)
    return header + bytes(align_up(len(header), alignment) - len(header)), offsets


# --- splitting --------------------------------------------------------------------------------

SPLIT_NAME = re.compile(SPLIT_NAME_PATTERN)


def split_path(path: Path, index: int, count: int) -> Path:
    """``model.gguf`` → ``model-00001-of-00003.gguf`` (index is 0-based), as llama.cpp names shards."""
    stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
    return path.with_name(f"{stem}-{index + 1:05d}-of-{count:05d}.gguf")


def plan_shards(tensors: Sequence[TensorSpec], policy: SplitPolicy | None) -> list[list[TensorSpec]]:
    if policy is None or (policy.max_tensors is None and policy.max_bytes is None):
        return [list(tensors)]
    if policy.max_tensors is not None and policy.max_tensors < 1:
        raise GGUFError("a split must hold at least one tensor")
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for t in tensors:
        cur = shards[-1]
        full = policy.max_tensors is not None and len(cur) >= policy.max_tensors
        too_big = policy.max_bytes is not None and cur and size + t.nbytes > policy.max_bytes
        if full or too_big:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


# --- writing ----------------------------------------------------------------------------------

TensorData = Callable[[TensorSpec], Any]  # returns a bytes-like object or an ndarray of nbytes bytes


def write_gguf(
    path: str | Path,
    metadata: Mapping[str, Any],
    tensors: Sequence[TensorSpec],
    data: TensorData,
    *,
    split: SplitPolicy | None = None,
    cancel: CancelToken | None = None,
    overwrite: bool = True,
) -> Iterator[Progress]:
    """Write a GGUF file (or shards), yielding :class:`Progress` in bytes; returns the paths.

    ``metadata`` maps keys to :class:`MetadataValue` or plain Python values. ``data(spec)`` is
    called once per tensor, in order, and must return exactly ``spec.nbytes`` bytes.
    Use ``paths = yield from write_gguf(...)`` or :func:`write_gguf_sync`.
    """
    final = Path(path)
    meta = {k: metadata_value(v) for k, v in metadata.items()}
    alignment = DEFAULT_ALIGNMENT
    if KEY_ALIGNMENT in meta:
        alignment = int(meta[KEY_ALIGNMENT].value)
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{KEY_ALIGNMENT} must be a power of two, got {alignment}")
    shards = plan_shards(tensors, split)
    n = len(shards)
    if n > 1:
        meta = {k: v for k, v in meta.items() if not k.startswith("split.")}
    headers = []
    for i, shard in enumerate(shards):
        shard_meta = dict(meta) if i == 0 else {}
        if n > 1:
            shard_meta[KEY_SPLIT_NO] = MetadataValue(GGUFValueType.UINT16, i)
            shard_meta[KEY_SPLIT_COUNT] = MetadataValue(GGUFValueType.UINT16, n)
            shard_meta[KEY_SPLIT_TENSORS] = MetadataValue(GGUFValueType.INT32, len(tensors))
            if i > 0 and KEY_ALIGNMENT in meta:
                shard_meta[KEY_ALIGNMENT] = meta[KEY_ALIGNMENT]
        headers.append(encode_header(shard_meta, shard, alignment))
    targets = [final] if n == 1 else [split_path(final, i, n) for i in range(n)]
    sizes = [
        len(h) + sum(align_up(t.nbytes, alignment) for t in shard)
        for (h, _), shard in zip(headers, shards, strict=True)
    ]
    total = sum(sizes)
    if not overwrite:
        for t in targets:
            if t.exists():
                raise GGUFError(f"{t} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(final.parent).free
    if free < total + _DISK_MARGIN:
        raise DiskSpaceError(
            f"not enough disk space in {final.parent}: writing needs {total / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free"
        )
    tag = uuid.uuid4().hex[:8]
    temps = [t.with_name(f".{t.name}.{tag}.partial") for t in targets]
    done = 0
    complete = False
    try:
        for shard, (header, _), temp in zip(shards, headers, temps, strict=True):
            with open(temp, "wb") as fh:
                fh.write(header)
                for spec in shard:
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    done = yield from _write_tensor(fh, spec, data, alignment, cancel, done, total)
                fh.flush()
                os.fsync(fh.fileno())
        for temp, target in zip(temps, targets, strict=True):
            os.replace(temp, target)
        complete = True
        yield Progress("write", total, total, "done")
        return targets
    finally:
        if not complete:
            for temp in temps:
                temp.unlink(missing_ok=True)


def _write_tensor(
    fh: BinaryIO,
    spec: TensorSpec,
    data: TensorData,
    alignment: int,
    cancel: CancelToken | None,
    done: int,
    total: int,
) -> Iterator[Progress]:
    buf = data(spec)
    view = (
        memoryview(np.ascontiguousarray(buf).view(np.uint8).reshape(-1))
        if isinstance(buf, np.ndarray)
        else memoryview(buf).cast("B")
    )
    if len(view) != spec.nbytes:
        raise GGUFError(
            f"tensor {spec.name!r}: got {len(view)} bytes of data, expected {spec.nbytes} "
            f"({type_name(spec.type)} {spec.dims})"
        )
    for start in range(0, len(view), _CHUNK):
        if cancel is not None and start:
            cancel.raise_if_cancelled()
        fh.write(view[start : start + _CHUNK])
        done += min(_CHUNK, len(view) - start)
        yield Progress("write", done, total, spec.name)
    pad = align_up(spec.nbytes, alignment) - spec.nbytes
    if pad:
        fh.write(bytes(pad))
        done += pad
    return done


def write_gguf_sync(*args: Any, **kwargs: Any) -> list[Path]:
    """Run :func:`write_gguf` to completion, ignoring progress; returns the written paths."""
    gen = write_gguf(*args, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
