"""Optional access to llama.cpp through llama-cpp-python, for side-by-side benchmarks only."""

from __future__ import annotations

import ctypes
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


def open_llama(path: Path, n_ctx: int, threads: int) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def last_logits(llm: Any) -> np.ndarray:
    import llama_cpp

    n_vocab = llm.n_vocab()
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
