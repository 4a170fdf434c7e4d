"""Quantize/dequantize speed of engine.quant vs llama.cpp's ggml_quantize_chunk, side by side.

    python benchmarks/bench_quant.py [--rows 256] [--cols 4096] [--repeat 5] [--types Q4_0,IQ4_NL|all]

Quantize: MB/s of float32 input (standard normal, rows x cols), Kvant's Numba kernels on 1 thread
and on all Numba threads, llama.cpp on 1 thread (one ggml_quantize_chunk call) and on as many
threads (concurrent calls on row slices, as llama-quantize splits a tensor; ctypes drops the GIL).
Every Kvant output is checked byte-for-byte against llama.cpp's before timing.  llama.cpp columns
are left out, with a note, when llama-cpp-python is not installed.
Dequantize: M elements/s, Kvant 1 / all threads vs gguf-py's NumPy dequantize.
First use: seconds to import and run every benchmarked kernel once with an empty Numba cache,
then in a fresh process with the cache filled (cache=True).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_TYPES = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
]  # fmt: skip


def _fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_quant_fixtures", ROOT / "scripts" / "make_quant_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _first_use(types: list[str]) -> tuple[float, float]:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np, engine.quant as Q\n"
        "x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)\n"
        "im = np.ones(512, np.float32)\n"
        f"for t in {types!r}:\n"
        "    f = Q.format_of(t)\n"
        "    raw = Q.quantize(x, t)\n"
        "    if f.uses_imatrix: Q.quantize(x, t, im)\n"
        "    Q.dequantize(raw, t, x.shape)\n"
        "print(time.perf_counter() - t0)\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        run = [sys.executable, "-c", code]
        cold = float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
        warm = float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
    return cold, warm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES), help="comma list, or 'all'")
    ap.add_argument("--no-compile", action="store_true", help="skip the first-use compile measurement")
    args = ap.parse_args()

    import gguf
    import numba

    import engine.quant as Q

    types = (
        [s.name for s in Q.supported() if s.can_quantize] if args.types == "all" else args.types.split(",")
    )
    fx = _fixture_module()
    try:
        lib = fx.load_ggml()
        version = fx.llama_version()
    except (ImportError, OSError) as e:
        lib, version = None, None
        print(f"note: llama.cpp columns skipped (llama-cpp-python not usable: {e})")

    nthreads = numba.config.NUMBA_NUM_THREADS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    im = (rng.gamma(1.5, 1.0, args.cols) + 1e-3).astype(np.float32)
    mb = x.nbytes / 1e6
    print(f"input {args.rows}x{args.cols} f32 = {mb:.1f} MB; best of {args.repeat}; numba threads {nthreads}")
    if version:
        print(f"llama.cpp: {version}")
    print()
    hdr = (
        "| type | imatrix | Kvant 1 thr | Kvant {n} thr | llama.cpp 1 thr | llama.cpp {n} thr "
        "| Kvant/C (1 thr) |"
    )
    print(hdr.format(n=nthreads))
    print("|---|---|---|---|---|---|---|")

    def llama_parallel(t, imat):
        parts = np.array_split(np.arange(args.rows), nthreads)
        with ThreadPoolExecutor(nthreads) as pool:
            list(pool.map(lambda p: fx.ggml_quantize(lib, t, x[p[0] : p[-1] + 1], imat), parts))

    for t in types:
        fmt = Q.format_of(t)
        for imat in [None, im] if fmt.uses_imatrix else [None]:
            ours = Q.quantize(x, t, imat)
            row = [t, "yes" if imat is not None else "no"]
            numba.set_num_threads(1)
            t1 = _best(lambda t=t, imat=imat: Q.quantize(x, t, imat), args.repeat)
            numba.set_num_threads(nthreads)
            tn = _best(lambda t=t, imat=imat: Q.quantize(x, t, imat), args.repeat)
            row += [f"{mb / t1:.1f}", f"{mb / tn:.1f}"]
            if lib is not None:
                theirs = fx.ggml_quantize(lib, t, x, imat)
                if not np.array_equal(ours, theirs):
                    print(f"MISMATCH with llama.cpp for {t} imatrix={imat is not None}", file=sys.stderr)
                    return 1
                c1 = _best(lambda t=t, imat=imat: fx.ggml_quantize(lib, t, x, imat), args.repeat)
                cn = _best(lambda t=t, imat=imat: llama_parallel(t, imat), args.repeat)
                row += [f"{mb / c1:.1f}", f"{mb / cn:.1f}", f"{c1 / t1:.2f}×"]
            else:
                row += ["—", "—", "—"]
            print("| " + " | ".join(row) + " |", flush=True)

    print()
    print(f"| type | Kvant dequant 1 thr | Kvant {nthreads} thr | gguf-py | (M elements/s) |")
    print("|---|---|---|---|---|")
    melem = x.size / 1e6
    for t in types:
        raw = Q.quantize(x, t)
        numba.set_num_threads(1)
        d1 = _best(lambda t=t, raw=raw: Q.dequantize(raw, t, x.shape), args.repeat)
        numba.set_num_threads(nthreads)
        dn = _best(lambda t=t, raw=raw: Q.dequantize(raw, t, x.shape), args.repeat)
        qt = gguf.GGMLQuantizationType[t]
        dg = _best(lambda raw=raw, qt=qt: gguf.quants.dequantize(raw, qt), args.repeat)
        print(f"| {t} | {melem / d1:.0f} | {melem / dn:.0f} | {melem / dg:.0f} | |", flush=True)

    if not args.no_compile:
        cold, warm = _first_use(types)
        print()
        print(f"first use (import + every kernel once): empty Numba cache {cold:.1f} s, cached {warm:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
