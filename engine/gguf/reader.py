"""A memory-mapped, zero-copy GGUF reader that treats every file as hostile.

Only the header (metadata and tensor table) is parsed; tensor data stays in the mapping
and is handed out as NumPy views. Every length and count is checked against the bytes
that remain before anything is allocated, so a malformed file raises :class:`GGUFError`
saying what is wrong and at which byte offset, and never allocates more than its size.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from engine.errors import GGUFError
from engine.gguf.constants import (
    DEFAULT_ALIGNMENT,
    KEY_ALIGNMENT,
    MAGIC,
    MAX_ARRAY_NESTING,
    MAX_DIMS,
    MAX_NAME_BYTES,
    MIN_VALUE_SIZE,
    NUMPY_DTYPES,
    PLAIN_TENSOR_DTYPES,
    SCALAR_FORMATS,
    SCALAR_SIZES,
    SUPPORTED_VERSIONS,
    align_up,
    block_geometry,
    type_name,
)


class GGUFIncomplete(GGUFError):
    """The bytes given end inside the header of a longer file: read more and parse again."""


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class MetadataValue:
    """One metadata value with its GGUF type (kept so a file can be written back identically).

    ``value`` is a Python ``int``/``float``/``bool``/``str`` for scalars, a read-only NumPy array
    for arrays of numbers, a ``list[str]`` for arrays of strings, and a ``list[MetadataValue]``
    for arrays of arrays.
    """

    type: GGUFValueType
    value: Any
    item_type: GGUFValueType | None = None

    def to_python(self) -> Any:
        """The value as plain Python objects (lists instead of arrays)."""
        if isinstance(self.value, np.ndarray):
            return self.value.tolist()
        if self.type == GGUFValueType.ARRAY and self.item_type == GGUFValueType.ARRAY:
            return [v.to_python() for v in self.value]
        return self.value


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of the tensor table.

    ``shape`` is NumPy order (slowest dimension first); ``dims`` is GGUF/ggml order (``ne``,
    contiguous dimension first). ``offset`` is relative to the data section,
    ``file_offset`` absolute within its file; ``shard`` is the 0-based file of a split model.
    """

    name: str
    type: int
    dims: tuple[int, ...]
    offset: int
    nbytes: int
    file_offset: int
    shard: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return type_name(self.type)


@dataclass(slots=True)
class GGUFHeader:
    """Everything before the tensor data."""

    version: int
    metadata: dict[str, MetadataValue]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    file_size: int
    header_size: int  # bytes up to the end of the tensor table (before padding)
    tensor_index: dict[str, int] = field(default_factory=dict)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; errors name the offset and the item."""

    __slots__ = ("buf", "limit", "pos", "size", "source")

    def __init__(self, buf: memoryview, source: str, file_size: int | None = None) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)  # bytes we have
        self.limit = max(self.size, file_size or 0)  # bytes the file has
        self.source = source

    def fail(self, what: str, at: int | None = None) -> GGUFError:
        return GGUFError(f"{self.source}: {what} (at byte {self.pos if at is None else at})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            self.short(self.pos + n, what)

    def short(self, end: int, what: str) -> None:
        """Raise for a read that ends at ``end``, past the bytes we have."""
        if end <= self.limit:
            raise GGUFIncomplete(f"{self.source}: the header continues past the first {self.size} bytes")
        raise self.fail(
            f"file is truncated: {what} needs {end - self.pos} bytes but only {self.limit - self.pos} remain"
        )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def count(self, what: str, min_item_size: int) -> int:
        """A u64 count whose items (each at least ``min_item_size`` bytes) must fit in what remains."""
        at = self.pos
        n = self.u64(what)
        remaining = self.limit - self.pos
        if n * max(min_item_size, 1) > remaining:
            raise self.fail(
                f"{what} is {n}, impossible with {remaining} bytes left (truncated or corrupt file)", at
            )
        return n

    def string(self, what: str) -> str:
        at = self.pos
        n = self.count(f"length of {what}", 1)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # keep the exact bytes so the file can be written back identically
            s = raw.decode("utf-8", errors="surrogateescape")
            if what.startswith("key") or what.startswith("tensor name"):
                raise self.fail(f"{what} is not valid UTF-8: {s!r}", at) from None
            return s

    def scalar(self, vtype: GGUFValueType, what: str) -> Any:
        size = SCALAR_SIZES[vtype]
        self.need(size, what)
        (v,) = struct.unpack_from("<" + SCALAR_FORMATS[vtype], self.buf, self.pos)
        self.pos += size
        return v

    def value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        raw = self.u32(what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {raw}", at) from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> MetadataValue:
        if vtype == GGUFValueType.STRING:
            return MetadataValue(vtype, self.string(what))
        if vtype != GGUFValueType.ARRAY:
            return MetadataValue(vtype, self.scalar(vtype, what))
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
        item_type = self.value_type(f"element type of {what}")
        n = self.count(f"element count of {what}", MIN_VALUE_SIZE[item_type])
        if item_type == GGUFValueType.STRING:
            return MetadataValue(vtype, self._string_array(n, what), item_type)
        if item_type == GGUFValueType.ARRAY:
            items = [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(n)]
            return MetadataValue(vtype, items, item_type)
        nbytes = n * SCALAR_SIZES[item_type]
        self.need(nbytes, what)
        arr = np.frombuffer(self.buf, dtype=NUMPY_DTYPES[item_type], count=n, offset=self.pos)
        self.pos += nbytes
        return MetadataValue(vtype, arr, item_type)

    def _string_array(self, n: int, what: str) -> list[str]:
        buf, size, unpack = self.buf, self.size, _U64.unpack_from
        pos = self.pos
        out: list[str] = [""] * n
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.short(pos + 8, f"{what}[{i}]")
            (length,) = unpack(buf, pos)
            pos += 8
            end = pos + length
            if end > size:
                self.pos = pos - 8
                if end <= self.limit:
                    self.short(end, f"{what}[{i}]")
                left = self.limit - pos
                raise self.fail(f"length of {what}[{i}] is {length}, impossible with {left} bytes left")
            raw = buf[pos:end].tobytes()
            try:
                out[i] = raw.decode("utf-8")
            except UnicodeDecodeError:
                out[i] = raw.decode("utf-8", errors="surrogateescape")
            pos = end
        self.pos = pos
        return out


def parse_header(
    buf: memoryview | bytes, source: str = "<buffer>", *, file_size: int | None = None
) -> GGUFHeader:
    """Parse and validate a GGUF header from ``buf``: the whole file, or its first bytes.

    With ``file_size`` larger than ``buf`` (a prefix, e.g. fetched with an HTTP Range request),
    counts and tensor offsets are checked against the whole file's size, and a header that runs
    past the prefix raises :class:`GGUFIncomplete` (a :class:`GGUFError`): fetch more, retry.
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    cur = _Cursor(view, source, file_size)
    if cur.limit == 0:
        raise GGUFError(f"{source}: the file is empty, not a GGUF model")
    cur.need(4, "the magic bytes")
    magic = bytes(view[:4])
    if magic != MAGIC:
        raise cur.fail(f"not a GGUF file: it starts with {magic!r}, expected {MAGIC!r}", 0)
    cur.pos = 4
    version = cur.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise cur.fail("GGUF version 1 is obsolete and not supported; re-convert the model", 4)
        if version & 0xFFFF == 0 and version >> 16:
            raise cur.fail("this GGUF file is big-endian, which Kvant does not read", 4)
        raise cur.fail(f"unsupported GGUF version {version} (Kvant reads versions 2 and 3)", 4)
    n_tensors = cur.count("tensor count", 8 + 4 + 8 + 4 + 8)
    n_kv = cur.count("metadata key count", 8 + 4 + 1)

    metadata: dict[str, MetadataValue] = {}
    for i in range(n_kv):
        at = cur.pos
        key = cur.string(f"key of metadata entry {i}")
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {key!r}", at)
        vtype = cur.value_type(f"type of metadata {key!r}")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")

    alignment = DEFAULT_ALIGNMENT
    if KEY_ALIGNMENT in metadata:
        mv = metadata[KEY_ALIGNMENT]
        a = mv.value
        if mv.type != GGUFValueType.UINT32 or a <= 0 or a & (a - 1):
            raise GGUFError(f"{source}: {KEY_ALIGNMENT} must be a u32 power of two, got {a!r}")
        alignment = a

    tensors: list[TensorInfo] = []
    index: dict[str, int] = {}
    raw_infos: list[tuple[str, int, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        at = cur.pos
        name = cur.string(f"tensor name {i}")
        if name in index:
            raise cur.fail(f"duplicate tensor name {name!r}", at)
        if len(name.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES:
            raise cur.fail(f"tensor name {name[:80]!r} is longer than {MAX_NAME_BYTES} bytes", at)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        type_at = cur.pos
        ttype = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"data offset of tensor {name!r}")
        geometry = block_geometry(ttype)
        if geometry is None:
            raise cur.fail(f"tensor {name!r} has unknown type id {ttype}", type_at)
        block, type_size = geometry
        n_el = 1
        for d in dims:
            if d > _INT64_MAX or (d and n_el > _INT64_MAX // d):
                raise cur.fail(f"tensor {name!r} has absurd dimensions {dims}", at)
            n_el *= d
        if dims[0] % block:
            raise cur.fail(
                f"tensor {name!r} ({type_name(ttype)}) has row length {dims[0]}, "
                f"not a multiple of its block size {block}",
                at,
            )
        nbytes = n_el // block * type_size
        if offset % alignment:
            raise cur.fail(f"tensor {name!r} data offset {offset} is not aligned to {alignment}", at)
        index[name] = i
        raw_infos.append((name, ttype, dims, offset, nbytes))

    header_size = cur.pos
    data_offset = align_up(header_size, alignment)
    data_size = cur.limit - data_offset
    for name, ttype, dims, offset, nbytes in raw_infos:
        if offset + nbytes > data_size:
            raise GGUFError(
                f"{source}: tensor {name!r} lies outside the file: bytes {offset}..{offset + nbytes} "
                f"of the data section, which has {max(data_size, 0)} bytes (file truncated?)"
            )
        tensors.append(TensorInfo(name, ttype, dims, offset, nbytes, data_offset + offset))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for prev, nxt in itertools.pairwise(ordered):
        if prev.offset + prev.nbytes > nxt.offset:
            raise GGUFError(f"{source}: the data of tensors {prev.name!r} and {nxt.name!r} overlap")
    return GGUFHeader(
        version=version,
        metadata=metadata,
        tensors=tensors,
        alignment=alignment,
        data_offset=data_offset,
        file_size=cur.limit,
        header_size=header_size,
        tensor_index=index,
    )


class GGUFFile:
    """One GGUF file, memory-mapped read-only. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = fh.seek(0, 2)
                if size == 0:
                    raise GGUFError(f"{self.path}: the file is empty, not a GGUF model")
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise GGUFError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path}: is a folder, not a GGUF file") from None
        except (PermissionError, OSError) as err:
            if isinstance(err, GGUFError):
                raise
            raise GGUFError(f"{self.path}: cannot be read: {err.strerror or err}") from None
        try:
            self.header = parse_header(memoryview(self._mmap), str(self.path))
        except GGUFError as err:
            err.__traceback__ = None  # drop the parser's frames, which hold views of the mapping
            self.close()
            raise err from None
        except BaseException:
            self.close()
            raise

    # --- header shortcuts -------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, MetadataValue]:
        return self.header.metadata

    @property
    def tensors(self) -> list[TensorInfo]:
        return self.header.tensors

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def alignment(self) -> int:
        return self.header.alignment

    @property
    def file_size(self) -> int:
        return self.header.file_size

    def get(self, key: str, default: Any = None) -> Any:
        mv = self.header.metadata.get(key)
        return default if mv is None else mv.value

    def tensor(self, name: str) -> TensorInfo:
        i = self.header.tensor_index.get(name)
        if i is None:
            raise GGUFError(f"{self.path}: no tensor named {name!r}")
        return self.header.tensors[i]

    # --- data ---------------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapping (no copy)."""
        t = self.tensor(name)
        return np.frombuffer(self._mmap, dtype=np.uint8, count=t.nbytes, offset=t.file_offset)

    def array(self, name: str) -> np.ndarray:
        """A typed, shaped view of a plain (F32, F16, I8...) tensor; quantized types raise."""
        t = self.tensor(name)
        dtype = PLAIN_TENSOR_DTYPES.get(t.type)
        if dtype is None:
            raise GGUFError(
                f"tensor {name!r} is {t.type_name}, a block-quantized type: use raw() and dequantize"
            )
        return np.frombuffer(self._mmap, dtype=dtype, count=t.n_elements, offset=t.file_offset).reshape(
            t.shape
        )

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Let go of the pages of the tensor's bytes ``start:stop`` in this process (MADV_DONTNEED; a
        no-op where the platform has no madvise): for bytes already copied elsewhere, e.g. weights
        repacked at load, so that they are not resident twice.  Reading them again maps the pages
        back from the file (or the OS cache), so this never loses data."""
        madvise = getattr(self._mmap, "madvise", None)
        if madvise is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        t = self.tensor(name)
        stop = t.nbytes if stop is None else min(stop, t.nbytes)
        first = t.file_offset + max(0, start)
        start = first - first % mmap.PAGESIZE
        length = t.file_offset + stop - start
        if length > 0:
            madvise(mmap.MADV_DONTNEED, start, length)

    def bytes_range(self, start: int, stop: int) -> memoryview:
        return memoryview(self._mmap)[start:stop]

    def close(self) -> None:
        # NumPy views may still reference the mapping; it then closes when they are gone
        with contextlib.suppress(BufferError):
            self._mmap.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.header.tensors)

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, "
            f"{len(self.tensors)} tensors)"
        )
