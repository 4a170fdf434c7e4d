"""K-quant mat-vec / mat-mat speed on the default model's K-quant layer shapes (random weights).

Prefill: ``qgemm`` with 512 tokens, decode: ``matvec`` with 1 token, best of ``--repeat`` runs
(decode: each run the mean of ``--calls`` calls).  GMAC/s = rows·cols·tokens / time.  The machine
may be shared: run it more than once.

Run:  NUMBA_NUM_THREADS=1 python benchmarks/bench_kquant_gemm.py [--repeat 5] [--tokens 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = (("Q4_K", 640, 1024), ("Q4_K", 640, 2048), ("Q5_K", 640, 2048), ("Q6_K", 640, 2048))
IDS = {"Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()

    from engine.quant import quantize
    from engine.runtime.kernels import matvec, quantize_act, repack
    from engine.runtime.kernels.qgemm import qgemm

    rng = np.random.default_rng(0)
    print("| type | rows×cols | prefill ms | prefill GMAC/s | decode µs | decode GMAC/s |")
    print("|---|---|---|---|---|---|")
    for qtype, rows, cols in SHAPES:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        raw = np.asarray(quantize(w, qtype), np.uint8).reshape(rows, -1)
        W = repack(raw, IDS[qtype], rows, cols)
        x = rng.standard_normal((args.tokens, cols)).astype(np.float32)
        act = quantize_act(W, x)
        out = qgemm(W, x, act=act)
        best = np.inf
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            qgemm(W, x, out=out, act=act)
            best = min(best, time.perf_counter() - t0)
        x1 = x[:1]
        a1 = quantize_act(W, x1)
        o1 = matvec(W, x1, act=a1)
        dbest = np.inf
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                matvec(W, x1, out=o1, act=a1)
            dbest = min(dbest, (time.perf_counter() - t0) / args.calls)
        mac = rows * cols
        print(
            f"| {qtype} | {rows}×{cols} | {best * 1e3:.2f} | {mac * args.tokens / best / 1e9:.1f} "
            f"| {dbest * 1e6:.1f} | {mac / dbest / 1e9:.1f} |"
        )


if __name__ == "__main__":
    main()
