"""Broken and hostile GGUF input: always one GGUFError that says what and where, never a crash.

The fuzz test mutates real headers (a small sample with every value type, and the default
model's header); every mutation must parse or raise GGUFError, with bounded memory.
Set KVANT_FUZZ_CASES to run more cases than CI does.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tracemalloc

import numpy as np
import pytest

from engine.errors import GGUFError
from engine.gguf import GGUFFile, open_gguf, parse_header
from tests.gguf_samples import write_sample

FUZZ_CASES = int(os.environ.get("KVANT_FUZZ_CASES", "10000"))


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, v: int) -> bytes:
    return s(key) + struct.pack("<II", 4, v)


def tensor_info(name: str, dims, ttype: int, offset: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)


def gguf_bytes(kvs=(), infos=(), version=3, n_tensors=None, n_kv=None, data=b"", magic=b"GGUF", align=32):
    body = magic + struct.pack(
        "<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body += b"".join(kvs) + b"".join(infos)
    body += bytes(-len(body) % align)
    return body + data


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory) -> bytes:
    return write_sample(tmp_path_factory.mktemp("s") / "s.gguf").read_bytes()


CASES = {
    "empty": (b"", "empty"),
    "bad magic": (b"GGML" + bytes(100), "not a GGUF file"),
    "short magic": (b"GG", "truncated"),
    "version 1": (gguf_bytes(version=1), "version 1 is obsolete"),
    "version 9": (gguf_bytes(version=9), "unsupported GGUF version 9"),
    "big-endian": (gguf_bytes(version=3 << 24), "big-endian"),
    "absurd tensor count": (gguf_bytes(n_tensors=2**62), "tensor count is 4611686018427387904, impossible"),
    "absurd kv count": (gguf_bytes(n_kv=2**64 - 1), "metadata key count is .* impossible"),
    "absurd string length": (gguf_bytes(kvs=[struct.pack("<Q", 2**60) + b"k"], n_kv=1), "length of key"),
    "absurd array count": (
        gguf_bytes(kvs=[s("a") + struct.pack("<IIQ", 9, 4, 2**61)]),
        "element count of metadata 'a'",
    ),
    "unknown value type": (gguf_bytes(kvs=[s("a") + struct.pack("<I", 77)]), "unknown value type 77"),
    "unknown array type": (gguf_bytes(kvs=[s("a") + struct.pack("<IIQ", 9, 99, 1)]), "unknown value type 99"),
    "duplicate key": (gguf_bytes(kvs=[kv_u32("a", 1), kv_u32("a", 2)]), "duplicate metadata key 'a'"),
    "invalid utf-8 key": (gguf_bytes(kvs=[s(b"\xff\xfe") + struct.pack("<II", 4, 1)]), "not valid UTF-8"),
    "bad alignment": (gguf_bytes(kvs=[kv_u32("general.alignment", 24)]), "power of two"),
    "zero alignment": (gguf_bytes(kvs=[kv_u32("general.alignment", 0)]), "power of two"),
    "duplicate tensor": (
        gguf_bytes(infos=[tensor_info("w", [4], 0, 0), tensor_info("w", [4], 0, 32)], data=bytes(64)),
        "duplicate tensor name 'w'",
    ),
    "long tensor name": (
        gguf_bytes(infos=[tensor_info("w" * 64, [4], 0, 0)], data=bytes(32)),
        "longer than 63",
    ),
    "too many dims": (gguf_bytes(infos=[tensor_info("w", [1] * 5, 0, 0)], data=bytes(32)), "5 dimensions"),
    "zero dims": (gguf_bytes(infos=[tensor_info("w", [], 0, 0)], data=bytes(32)), "0 dimensions"),
    "unknown tensor type": (
        gguf_bytes(infos=[tensor_info("w", [4], 4, 0)], data=bytes(32)),
        "unknown type id 4",
    ),
    "overflowing dims": (
        gguf_bytes(infos=[tensor_info("w", [2**32, 2**32, 2**32], 0, 0)], data=bytes(32)),
        "absurd dimensions",
    ),
    "row not a block multiple": (
        gguf_bytes(infos=[tensor_info("w", [33], 8, 0)], data=bytes(64)),
        "not a multiple of its block size 32",
    ),
    "misaligned offset": (
        gguf_bytes(infos=[tensor_info("w", [4], 0, 8)], data=bytes(64)),
        "not aligned to 32",
    ),
    "offset outside file": (
        gguf_bytes(infos=[tensor_info("w", [4], 0, 2**40)], data=bytes(32)),
        "lies outside the file",
    ),
    "truncated data": (gguf_bytes(infos=[tensor_info("w", [64], 0, 0)], data=bytes(100)), "lies outside"),
    "overlapping tensors": (
        gguf_bytes(infos=[tensor_info("a", [16], 0, 0), tensor_info("b", [16], 0, 32)], data=bytes(128)),
        "overlap",
    ),
    "deeply nested arrays": (
        gguf_bytes(kvs=[s("a") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 20]),
        "nests arrays",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_header_raises_clear_error(name):
    data, pattern = CASES[name]
    with pytest.raises(GGUFError, match=pattern) as err:
        parse_header(data, "hostile.gguf")
    assert str(err.value).startswith("hostile.gguf: ")


def test_errors_name_the_offset():
    with pytest.raises(GGUFError, match=r"\(at byte 4\)"):
        parse_header(gguf_bytes(version=1), "x")


def test_every_truncation_of_a_real_header_is_reported(sample_bytes):
    header = parse_header(sample_bytes)
    data_end = max(t.file_offset + t.nbytes for t in header.tensors)
    assert data_end < len(sample_bytes)  # the rest is padding, which may be cut
    for cut in range(data_end):
        with pytest.raises(GGUFError):
            parse_header(sample_bytes[:cut], "cut.gguf")


def test_files_on_disk(tmp_path, sample_bytes):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(sample_bytes[:100])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(bad)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="empty"):
        open_gguf(tmp_path / "empty.gguf")
    with pytest.raises(GGUFError, match="no such file"):
        open_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="is a folder"):
        GGUFFile(tmp_path)


def _mutate(rng: np.random.Generator, buf: bytes, header_end: int) -> bytes:
    b = bytearray(buf)
    op = rng.integers(0, 6)
    limit = max(header_end, 8)
    if op == 0:  # flip bits
        for _ in range(rng.integers(1, 8)):
            i = rng.integers(0, limit)
            b[i] ^= 1 << rng.integers(0, 8)
    elif op == 1:  # overwrite a little-endian u64 / u32 with an extreme value
        i = int(rng.integers(4, limit - 8))
        extremes = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, int(rng.integers(0, 2**62))]
        v = extremes[int(rng.integers(0, len(extremes)))]
        b[i : i + 8] = v.to_bytes(8, "little")
    elif op == 2:  # truncate
        return bytes(b[: rng.integers(0, len(b))])
    elif op == 3:  # random bytes
        i = int(rng.integers(0, limit))
        n = int(rng.integers(1, 32))
        b[i : i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif op == 4:  # delete a span
        i = int(rng.integers(0, limit))
        del b[i : i + int(rng.integers(1, 16))]
    else:  # duplicate a span
        i = int(rng.integers(0, limit))
        b[i:i] = b[i : i + int(rng.integers(1, 64))]
    return bytes(b)


def _check(data: bytes) -> str:
    try:
        parse_header(data, "fuzz.gguf")
    except GGUFError:
        return "rejected"
    return "accepted"


def test_fuzz_sample_header(sample_bytes):
    rng = np.random.default_rng(20261123)
    header_end = parse_header(sample_bytes).header_size
    outcomes = {"accepted": 0, "rejected": 0}
    for _ in range(FUZZ_CASES):
        outcomes[_check(_mutate(rng, sample_bytes, header_end))] += 1
    assert outcomes["rejected"] > FUZZ_CASES // 4  # the mutations really do break files
    assert outcomes["accepted"] > 0  # and some are harmless (e.g. flipped string contents)


def test_fuzz_memory_is_bounded(sample_bytes):
    rng = np.random.default_rng(7)
    header_end = parse_header(sample_bytes).header_size
    tracemalloc.start()
    try:
        for _ in range(300):
            data = _mutate(rng, sample_bytes, header_end)
            tracemalloc.reset_peak()
            _check(data)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 8 * len(data) + (1 << 20)
    finally:
        tracemalloc.stop()


def test_fuzz_default_model_header(default_model):
    with GGUFFile(default_model) as f:
        header_end = f.header.header_size
        head = bytes(f.bytes_range(0, f.header.data_offset))
    # the header alone (no data section): every tensor must be reported outside the file
    with pytest.raises(GGUFError, match="lies outside the file"):
        parse_header(head)
    rng = np.random.default_rng(3)
    cases = int(os.environ.get("KVANT_FUZZ_REAL_CASES", "30"))
    for _ in range(cases):
        _check(_mutate(rng, head, header_end))


def test_prefix_parsing_with_file_size(sample_bytes):
    """A header read from the first bytes of a file (HTTP Range) parses, or asks for more bytes."""
    from engine.gguf import GGUFIncomplete

    full = parse_header(sample_bytes)
    for cut in range(full.header_size):  # any prefix that ends inside the header
        with pytest.raises(GGUFIncomplete):
            parse_header(sample_bytes[:cut], "remote.gguf", file_size=len(sample_bytes))
    prefix = parse_header(sample_bytes[: full.header_size], "remote.gguf", file_size=len(sample_bytes))
    assert prefix.file_size == len(sample_bytes) and prefix.data_offset == full.data_offset
    assert [(t.name, t.file_offset, t.nbytes) for t in prefix.tensors] == [
        (t.name, t.file_offset, t.nbytes) for t in full.tensors
    ]
    assert prefix.metadata["tokenizer.ggml.tokens"].value == full.metadata["tokenizer.ggml.tokens"].value
    # a declared size too small for the tensors is still an error, not a request for more bytes
    with pytest.raises(GGUFError, match="lies outside the file") as err:
        parse_header(sample_bytes[: full.header_size], "remote.gguf", file_size=full.data_offset + 10)
    assert not isinstance(err.value, GGUFIncomplete)
    # counts are judged against the whole file: a huge array in a big file is fine to ask more for
    with pytest.raises(GGUFIncomplete):
        parse_header(sample_bytes[:64], "remote.gguf", file_size=10**9)
    # but impossible even for the whole file is an error
    with pytest.raises(GGUFError, match="impossible"):
        parse_header(gguf_bytes(n_tensors=2**40), "remote.gguf", file_size=10**6)


def test_fuzz_prefixes_with_declared_size(sample_bytes):
    rng = np.random.default_rng(11)
    header_end = parse_header(sample_bytes).header_size
    for _ in range(FUZZ_CASES // 4):
        data = _mutate(rng, sample_bytes, header_end)
        cut = int(rng.integers(0, len(data) + 1))
        declared = len(data) + int(rng.integers(0, 1 << 20))
        with contextlib.suppress(GGUFError):  # anything else fails the test
            parse_header(data[:cut], "fuzz.gguf", file_size=declared)
