"""Optional access to llama.cpp through llama-cpp-python, for side-by-side benchmarks only."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType


def available() -> str | None:
    """llama-cpp-python's version, or None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return str(llama_cpp.__version__)


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    """``struct ggml_type_traits`` of ggml.h (llama-cpp-python 0.3.x): name, block size, interleave,
    type size, is_quantized, ``to_float``, ``from_float_ref``."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


def load_ggml() -> ctypes.CDLL:
    """ctypes handle on llama.cpp's libggml-base with the quantization entry points typed."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    names = ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll")
    for name in names:
        if (lib_dir / name).exists():
            lib = ctypes.CDLL(str(lib_dir / name))
            break
    else:
        raise OSError(f"no ggml-base library in {lib_dir}")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_version.restype = ctypes.c_char_p
    lib.ggml_commit.restype = ctypes.c_char_p
    return lib


def quantize(lib: ctypes.CDLL, qtype: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """llama.cpp's ``ggml_quantize_chunk`` over all rows of ``x`` in one call (one thread)."""
    tid = int(GGMLQuantizationType[qtype])
    x = np.ascontiguousarray(x, np.float32)
    rows, n = x.shape
    lib.ggml_quantize_init(tid)
    out = np.empty((rows, lib.ggml_row_size(tid, n)), np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    lib.ggml_quantize_chunk(
        tid, x.ctypes.data, out.ctypes.data, 0, rows, n, None if im is None else im.ctypes.data
    )
    return out


def to_float(lib: ctypes.CDLL, qtype: str) -> Callable[[np.ndarray, np.ndarray], None]:
    """llama.cpp's dequantizer of ``qtype`` (the ``to_float`` of its type traits) as
    ``fn(raw, out)``: every block of the contiguous bytes ``raw`` into float32 ``out``, one thread."""
    tid = int(GGMLQuantizationType[qtype])
    traits = lib.ggml_get_type_traits(tid).contents
    name = traits.type_name.decode()
    if name.upper() != qtype or not traits.to_float:
        raise OSError(f"llama.cpp's type {tid} is {name!r} with to_float {traits.to_float}, expected {qtype}")
    fn = _TO_FLOAT(traits.to_float)

    def run(raw: np.ndarray, out: np.ndarray) -> None:
        if not (raw.flags.c_contiguous and out.flags.c_contiguous and out.dtype == np.float32):
            raise ValueError("to_float needs contiguous bytes and a contiguous float32 output")
        if raw.nbytes != out.size // traits.blck_size * traits.type_size:
            raise ValueError(f"{qtype}: {raw.nbytes} bytes do not hold {out.size} elements")
        fn(raw.ctypes.data, out.ctypes.data, out.size)

    return run


def dequantize(lib: ctypes.CDLL, qtype: str, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """llama.cpp's floats for the bytes ``raw`` of type ``qtype`` (one ``to_float`` call, one thread)."""
    out = np.empty(shape, np.float32)
    to_float(lib, qtype)(np.ascontiguousarray(raw), out)
    return out


def open_llama(path: Path, n_ctx: int, threads: int) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def last_logits(llm: Any) -> np.ndarray:
    import llama_cpp

    n_vocab = llm.n_vocab()
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
