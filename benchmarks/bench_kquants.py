"""K-quant quantize/dequantize speed: Kvant's Numba kernels against llama.cpp's ggml_quantize_chunk.

    python benchmarks/bench_kquants.py [--rows 256] [--cols 4096] [--repeat 3] [--types Q4_K,Q6_K]
                                       [--no-compile]

Quantize speed is MB/s of float32 input (best of --repeat), with and without an importance matrix, for
1 and 2 threads. llama.cpp (libggml-base.so from llama-cpp-python, through ctypes) is single-threaded
per call; its 2-thread figure runs two calls on half the rows each in two Python threads (ctypes
drops the GIL), which is how llama-quantize splits a tensor. Every Kvant result is checked
byte-for-byte against llama.cpp's. Dequantize speed is M elements/s against gguf-py (NumPy).
First-use compile time is measured in a child process with an empty Numba cache, and the start
from a warm cache in another.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

_COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
from engine.quant import kquants as K
x = np.ones((2, 256), np.float32)
for f in K.FORMATS.values():
    f.dequantize(f.quantize(x, None))
print(time.perf_counter() - t0)
"""


def _ggml_quantize(lib, tid: int, x: np.ndarray, out: np.ndarray, imatrix, threads: int) -> None:
    im = None if imatrix is None else imatrix.ctypes.data
    rows, n = x.shape
    bounds = [rows * i // threads for i in range(threads + 1)]

    def part(i):
        r0, r1 = bounds[i], bounds[i + 1]
        lib.ggml_quantize_chunk(tid, x[r0:r1].ctypes.data, out[r0:r1].ctypes.data, 0, r1 - r0, n, im)

    if threads == 1:
        part(0)
        return
    ts = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _compile_times() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        run = [sys.executable, "-c", _COMPILE_SNIPPET]
        cold = float(
            subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        )
        warm = float(
            subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        )
    return cold, warm


def main() -> int:
    import numba
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    from engine.quant import kquants as K

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    args = ap.parse_args()
    types = args.types.split(",")

    if not args.no_compile:
        cold, warm = _compile_times()
        print(f"first use, empty Numba cache (compiles every K-quant kernel): {cold:.1f} s")
        print(f"first use, warm Numba cache: {warm:.2f} s")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    imatrix = (rng.gamma(1.5, 1.0, args.cols) + 1e-3).astype(np.float32)
    mb = x.nbytes / 1e6
    from engine.bench.llamacpp import load_ggml

    lib = load_ggml()
    max_threads = numba.get_num_threads()
    print(f"input {args.rows}x{args.cols} f32 ({mb:.1f} MB), numba threads available: {max_threads}")
    print()
    print(
        "| type | imatrix | Kvant 1 thr | Kvant 2 thr | llama.cpp 1 thr | llama.cpp 2 thr | Kvant/C (1 thr) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in types:
        fmt = K.FORMATS[name]
        for im in (None, imatrix):
            want = np.empty((args.rows, args.cols // 256 * fmt.type_size), np.uint8)
            _ggml_quantize(lib, fmt.ggml_id, x, want, im, 1)
            got = fmt.quantize(x, im)  # warm-up (and compile if needed)
            if not np.array_equal(got, want):
                print(f"{name}: MISMATCH with llama.cpp", file=sys.stderr)
                return 1
            speeds = {}
            for threads in (1, 2):
                numba.set_num_threads(min(threads, max_threads))
                speeds["kv", threads] = mb / _best(lambda im=im, f=fmt: f.quantize(x, im), args.repeat)
                out = np.empty_like(want)
                speeds["c", threads] = mb / _best(
                    lambda im=im, out=out, t=threads, tid=fmt.ggml_id: _ggml_quantize(
                        lib, tid, x, out, im, t
                    ),
                    args.repeat,
                )
            numba.set_num_threads(max_threads)
            kv1, kv2, c1, c2 = speeds["kv", 1], speeds["kv", 2], speeds["c", 1], speeds["c", 2]
            tag = "yes" if im is not None else "no"
            print(f"| {name} | {tag} | {kv1:.1f} | {kv2:.1f} | {c1:.1f} | {c2:.1f} | {kv1 / c1:.2f}× |")
    print()
    print("| type | Kvant dequant 1 thr | Kvant dequant 2 thr | gguf-py (NumPy) |")
    print("|---|---|---|---|")
    for name in types:
        fmt = K.FORMATS[name]
        blocks = fmt.quantize(x, None).reshape(-1, fmt.type_size)
        n = blocks.shape[0] * fmt.block_size / 1e6
        res = []
        for threads in (1, 2):
            numba.set_num_threads(min(threads, max_threads))
            res.append(n / _best(lambda b=blocks, f=fmt: f.dequantize(b), args.repeat))
        numba.set_num_threads(max_threads)
        qt = GGMLQuantizationType[name]
        g = n / _best(lambda b=blocks, q=qt: gguf_dequantize(b.reshape(1, -1), q), args.repeat)
        print(f"| {name} | {res[0]:.0f} M/s | {res[1]:.0f} M/s | {g:.0f} M/s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
