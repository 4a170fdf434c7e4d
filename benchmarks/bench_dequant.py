"""Per-type dequantize speed, Kvant vs llama.cpp, interleaved in one process (noise-robust).

    NUMBA_NUM_THREADS=1 python benchmarks/bench_dequant.py [--types Q4_K,BF16] [--rows 1024]
                                                           [--cols 4096] [--repeat 10]

For every type the bytes Kvant's quantizer writes for a standard-normal matrix (with an importance
matrix where llama.cpp needs one; random blocks for the dequantize-only NVFP4) are dequantized
alternately ``--repeat`` times by ``engine.quant.dequantize`` and by llama.cpp's ``to_float`` (from
``ggml_get_type_traits``, one call, one thread, via ctypes, into a new array as Kvant returns one);
the best process CPU time of each is kept, so a burst of load from other processes hits both sides
alike.  llama.cpp's floats are checked bit for bit against Kvant's first.  Prints a Markdown table
(M elements/s).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="", help="comma-separated (default: every type but F32)")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()

    import numba

    import engine.quant as Q
    from engine.bench import llamacpp

    if llamacpp.available() is None:
        sys.exit("llama-cpp-python is not installed")
    lib = llamacpp.load_ggml()
    support = {s.name: s for s in Q.supported()}
    types = args.types.split(",") if args.types else list(support)
    types = [t for t in types if t != "F32"]  # llama.cpp's base library has no F32 to_float
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    im = (rng.gamma(1.5, 1.0, args.cols) + 1e-3).astype(np.float32)
    melem = x.size / 1e6
    load = os.getloadavg()
    print(
        f"{args.rows}×{args.cols}, best of {args.repeat} (process CPU time, interleaved), "
        f"Numba threads {numba.get_num_threads()}, llama.cpp {llamacpp.available()} (1 thread), "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print("| type | Kvant 1 thr | llama.cpp 1 thr | Kvant / llama.cpp | bit-exact |")
    print("|---|---|---|---|---|")
    for t in types:
        if support[t].can_quantize:
            raw = Q.quantize(x, t, im if support[t].uses_imatrix else None)
        else:  # dequantize-only (NVFP4): random blocks
            raw = rng.integers(0, 256, (x.size // support[t].block_size, support[t].type_size), np.uint8)
        ours = Q.dequantize(raw, t, x.shape)
        exact = np.array_equal(
            ours.view(np.uint32), llamacpp.dequantize(lib, t, raw, x.shape).view(np.uint32)
        )
        fns = [
            lambda t=t, raw=raw: Q.dequantize(raw, t, x.shape),
            lambda t=t, raw=raw: llamacpp.dequantize(lib, t, raw, x.shape),
        ]
        best = [float("inf")] * 2
        for _ in range(args.repeat):
            for i, fn in enumerate(fns):
                c0 = time.process_time()
                fn()
                best[i] = min(best[i], time.process_time() - c0)
        print(
            f"| {t} | {melem / best[0]:.0f} | {melem / best[1]:.0f} | {best[1] / best[0]:.2f}× | {exact} |",
            flush=True,
        )
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
