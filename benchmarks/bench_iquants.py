"""Grid IQ quantize/dequantize speed: Kvant's Numba kernels against llama.cpp's ggml_quantize_chunk.

    python benchmarks/bench_iquants.py [--rows 32] [--cols 4096] [--repeat 2] [--types IQ1_S,IQ3_S]

Quantize speed is MB/s of float32 input (best of --repeat) with an importance matrix (and without one
where llama.cpp allows it), llama.cpp single-threaded (one ggml_quantize_chunk call, through ctypes on
the libggml-base.so of llama-cpp-python; its tables are built by a warm-up call first) against Kvant
with 1 and 2 Numba threads (tables and kernels warmed up too). Every Kvant result is checked
byte-for-byte against llama.cpp's. Dequantize speed is M elements/s, 1 Numba thread, against
gguf-py (NumPy).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()

    import gguf
    import numba

    from engine.quant import iquants

    spec = __import__("importlib.util").util.spec_from_file_location(
        "mqf", ROOT / "scripts" / "make_quant_fixtures.py"
    )
    fx = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    lib = fx.load_ggml()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    im = (rng.gamma(1.5, 1.0, args.cols) + 1e-3).astype(np.float32)
    mb = x.nbytes / 1e6
    threads = numba.get_num_threads()
    print(f"input {args.rows}x{args.cols} float32 ({mb:.1f} MB), Numba threads available: {threads}")
    print("| type | imatrix | llama.cpp 1T MB/s | Kvant 1T MB/s | Kvant 2T MB/s | 1T ratio | ", end="")
    print("dequant Kvant M/s | gguf-py M/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.types.split(","):
        fmt = iquants.FORMATS[name]
        for imx in [im] if fmt.needs_imatrix else [im, None]:
            fx.ggml_quantize(lib, name, x[:1], imx)  # ggml_quantize_init
            fmt.quantize(x[:1], imx)  # compile / load cache, build tables
            ref = fx.ggml_quantize(lib, name, x, imx)
            t_c = _best(lambda imx=imx, name=name: fx.ggml_quantize(lib, name, x, imx), args.repeat)
            res = {}
            for nt in (1, min(2, threads)):
                numba.set_num_threads(nt)
                got = fmt.quantize(x, imx)
                if not np.array_equal(got, ref):
                    raise SystemExit(f"{name}: Kvant bytes differ from llama.cpp")
                res[nt] = _best(lambda imx=imx, fmt=fmt: fmt.quantize(x, imx), args.repeat)
            numba.set_num_threads(1)  # dequantize at 1 thread (see BENCHMARKS.md: 2-thread wake-up cost)
            blocks = ref.reshape(-1, fmt.type_size)
            fmt.dequantize(blocks[:1])
            t_dq = _best(lambda blocks=blocks, fmt=fmt: fmt.dequantize(blocks), 3 * args.repeat)
            qt = gguf.GGMLQuantizationType[name]
            t_gg = _best(lambda blocks=blocks, qt=qt: gguf.quants.dequantize(blocks, qt), args.repeat)
            numba.set_num_threads(threads)
            n_el = x.size / 1e6
            two = res[min(2, threads)]
            yn = "yes" if imx is not None else "no"
            print(f"| {name} | {yn} | {mb / t_c:.1f} | {mb / res[1]:.1f} | ", end="")
            print(f"{mb / two:.1f} | {t_c / res[1]:.2f}x | {n_el / t_dq:.0f} | {n_el / t_gg:.0f} |")


if __name__ == "__main__":
    main()
