"""Mat-vec throughput per weight type: Kvant's CPU kernels next to llama.cpp's ``ggml_mul_mat``.

    python benchmarks/bench_matvec.py [--rows 4096] [--cols 4096] [--repeat 20] [--types Q4_K,IQ2_XS]
                                      [--threads 1,2] [--no-llama]

For each type of ``engine.runtime.kernels.QTYPES``: a ``rows × cols`` weight of random blocks (every
code and grid index, realistic fp16 scales; speed does not depend on the values) times one activation
vector, reported as GB/s of GGUF weight bytes (best of ``--repeat``), activation conversion included, at
each Numba thread count. One-thread columns time process CPU time (so that a shared, loaded machine does
not count the time the process waits for a core); more threads, wall time. llama.cpp runs the same bytes
through its own graph (``ggml_mul_mat`` of a one-column f32 vector, ``ggml_graph_compute_with_ctx`` with
the same thread counts; libggml of llama-cpp-python via ctypes), when llama-cpp-python is installed.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def random_weight(name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """GGUF bytes (rows, row bytes) of a random ``name`` weight (tests/test_kernels_types.py's recipe)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_kernels_types import _random_blocks

    return np.ascontiguousarray(_random_blocks(name, rows, cols, seed)).reshape(rows, -1)


def _best(fn, repeat: int, cpu: bool = False) -> float:
    """Best time of ``repeat`` calls: process CPU time when ``cpu`` (single-threaded runs on a
    shared machine: time spent descheduled does not count), wall-clock time otherwise."""
    clock = time.process_time if cpu else time.perf_counter
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class LlamaMatVec:
    """One ``ggml_mul_mat`` graph (weight · f32 vector) on llama.cpp's CPU backend."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_kernel_fixtures import LlamaCpu

        self.lc = LlamaCpu()
        b, c = self.lc.base, self.lc.cpu
        vp = ctypes.c_void_p
        b.ggml_init.restype = vp
        b.ggml_init.argtypes = [_InitParams]
        b.ggml_free.argtypes = [vp]
        b.ggml_new_tensor_2d.restype = vp
        b.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        b.ggml_mul_mat.restype = vp
        b.ggml_mul_mat.argtypes = [vp, vp, vp]
        b.ggml_new_graph.restype = vp
        b.ggml_new_graph.argtypes = [vp]
        b.ggml_build_forward_expand.argtypes = [vp, vp]
        b.ggml_get_data.restype = vp
        b.ggml_get_data.argtypes = [vp]
        b.ggml_graph_overhead.restype = ctypes.c_size_t
        c.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        c.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]

    def setup(self, tid: int, raw: np.ndarray, x: np.ndarray):
        b = self.lc.base
        rows, cols = raw.shape[0], x.shape[0]
        mem = 2 * raw.nbytes + 4 * (cols + rows) + b.ggml_graph_overhead() + (16 << 20)
        ctx = b.ggml_init(_InitParams(mem, None, False))
        w = b.ggml_new_tensor_2d(ctx, tid, cols, rows)
        v = b.ggml_new_tensor_2d(ctx, 0, cols, 1)
        ctypes.memmove(b.ggml_get_data(w), raw.ctypes.data, raw.nbytes)
        ctypes.memmove(b.ggml_get_data(v), x.ctypes.data, x.nbytes)
        out = b.ggml_mul_mat(ctx, w, v)
        graph = b.ggml_new_graph(ctx)
        b.ggml_build_forward_expand(graph, out)
        res = np.ctypeslib.as_array(
            ctypes.cast(b.ggml_get_data(out), ctypes.POINTER(ctypes.c_float)), (rows,)
        )
        return ctx, graph, res

    def run(self, ctx, graph, threads: int) -> None:
        if self.lc.cpu.ggml_graph_compute_with_ctx(ctx, graph, threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")

    def free(self, ctx) -> None:
        self.lc.base.ggml_free(ctx)


def main() -> None:
    import numba

    from engine.runtime.kernels import QTYPES, matvec, repack

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--types", default="")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-llama", action="store_true")
    args = ap.parse_args()
    ids = {name: tid for tid, (name, _, _) in QTYPES.items()}
    names = args.types.split(",") if args.types else sorted(ids, key=ids.get)
    threads = [int(t) for t in args.threads.split(",")]
    llama = None
    if not args.no_llama:
        from engine.bench.llamacpp import available

        llama = LlamaMatVec() if available() else None
    x = np.random.default_rng(1).standard_normal((1, args.cols)).astype(np.float32)
    head = " | ".join(f"Kvant {t}T" for t in threads)
    if llama:
        head += " | " + " | ".join(f"llama.cpp {t}T" for t in threads)
    print(f"{args.rows}×{args.cols} mat-vec, GB/s of weight bytes (best of {args.repeat})\n")
    print(f"| type | MB | {head} | max rel. diff |")
    print("|---|---|" + "---|" * (len(threads) * (2 if llama else 1)) + "---|")
    for name in names:
        raw = random_weight(name, args.rows, args.cols)
        w = repack(raw, ids[name], args.rows, args.cols)
        gb = raw.nbytes / 1e9
        cells, ours = [], None
        for t in threads:
            numba.set_num_threads(t)
            ours = matvec(w, x)[0]
            cells.append(f"{gb / _best(lambda w=w: matvec(w, x), args.repeat, t == 1):.1f}")
        diff = ""
        if llama:
            ctx, graph, res = llama.setup(ids[name], raw, x[0])
            for t in threads:
                run = lambda t=t, c=ctx, g=graph: llama.run(c, g, t)  # noqa: E731
                cells.append(f"{gb / _best(run, args.repeat, t == 1):.1f}")
            diff = f"{np.abs(ours - res).max() / np.abs(res).max():.1e}"
            llama.free(ctx)
        print(f"| {name} | {raw.nbytes / 1e6:.1f} | " + " | ".join(cells) + f" | {diff} |", flush=True)


if __name__ == "__main__":
    main()
