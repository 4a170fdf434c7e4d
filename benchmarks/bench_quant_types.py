"""Per-type quantize speed, Kvant vs llama.cpp, interleaved in one process (noise-robust).

    python benchmarks/bench_quant_types.py [--types IQ2_XS,Q3_K] [--rows 64] [--cols 4096]
                                           [--repeat 5] [--threads 1] [--imatrix both|yes|no]

For every type (and with / without an importance matrix where it applies) the Kvant kernel and
llama.cpp's ``ggml_quantize_chunk`` (one call, one thread, via ctypes) run alternately ``--repeat``
times on the same standard-normal matrix; the best time of each is kept, so a burst of load from
other processes hits both sides alike.  Every Kvant output is checked byte for byte against
llama.cpp's first.  By default the clock is process CPU time, which a busy machine disturbs far
less than wall time (use it at 1 thread; ``--clock wall`` for several).  ``--rows`` defaults per
type so that one call takes ~0.1-0.3 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLOW = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS"}
DEFAULT = (
    "IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,IQ1_S,IQ1_M,IQ4_NL,IQ4_XS,MXFP4,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,"
    "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=DEFAULT)
    ap.add_argument("--rows", type=int, default=0, help="0: 32 for IQ types, 256 otherwise")
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--imatrix", choices=["both", "yes", "no"], default="both")
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: process CPU time (robust to other processes' load at 1 thread); wall: perf_counter",
    )
    args = ap.parse_args()

    import numba

    import engine.quant as Q
    from engine.bench import llamacpp

    numba.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    lib = llamacpp.load_ggml()
    support = {s.name: s for s in Q.supported()}
    rng = np.random.default_rng(0)
    print(f"threads={numba.get_num_threads()} clock={args.clock}")
    print("| type | imatrix | rows | Kvant MB/s | llama.cpp MB/s | ratio |")
    print("|---|---|---|---|---|---|")
    for t in args.types.split(","):
        s = support[t]
        rows = args.rows or (32 if t in SLOW else 256)
        x = rng.standard_normal((rows, args.cols)).astype(np.float32)
        im = (rng.gamma(1.5, 1.0, args.cols) + 1e-3).astype(np.float32)
        mb = x.nbytes / 1e6
        variants = [True] if s.needs_imatrix else ([False, True] if s.uses_imatrix else [False])
        if args.imatrix != "both" and not s.needs_imatrix:
            variants = [v for v in variants if v == (args.imatrix == "yes")] or variants
        for with_im in variants:
            imat = im if with_im else None
            ref = llamacpp.quantize(lib, t, x, imat)
            got = Q.quantize(x, t, imat)
            if not np.array_equal(ref, got):
                raise SystemExit(f"{t} imatrix={with_im}: Kvant bytes differ from llama.cpp")
            bk = bc = float("inf")
            for _ in range(args.repeat):
                t0 = clock()
                Q.quantize(x, t, imat)
                t1 = clock()
                llamacpp.quantize(lib, t, x, imat)
                t2 = clock()
                bk = min(bk, t1 - t0)
                bc = min(bc, t2 - t1)
            yn = "yes" if with_im else "no"
            print(f"| {t} | {yn} | {rows} | {mb / bk:.1f} | {mb / bc:.1f} | {bc / bk:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
