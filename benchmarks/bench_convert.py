"""Conversion throughput: Kvant's ``convert`` vs llama.cpp's ``llama_model_quantize`` on the same input.

A synthetic llama-layout F32 model (regenerated from a seed; default ~120 MB of weights) is quantized to each
preset by both, side by side; MB/s are megabytes of *source* weights per second, end to end (read, quantize,
write, fsync for Kvant). llama.cpp runs with nthread=2; Kvant uses its parallel Numba kernels (all cores).
The first Kvant run of each preset is a warm-up (Numba's on-disk cache) and is not timed. Outputs are checked
byte-identical before timing.

Run:  python benchmarks/bench_convert.py [--presets Q4_K_M Q8_0] [--layers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.convert import convert_sync
from engine.convert.rules import FTYPES
from engine.convert.synthetic import SyntheticSpec, write_synthetic
from engine.gguf import open_gguf


def llama_quantize(src: Path, dst: Path, preset: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = FTYPES[preset][0]
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama_model_quantize failed")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["Q4_K_M", "Q8_0"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    spec = SyntheticSpec("llama", args.layers, 1024, 2816, 16, 8, 64, 4096, "F32", 11)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_synthetic(Path(tmp) / "src.gguf", spec)
        with open_gguf(src) as m:
            mb = m.tensor_bytes / 1e6
        print(f"source: synthetic llama {args.layers}x1024 (n_ff 2816, vocab 4096), {mb:.1f} MB F32")
        print(f"{'preset':<8} {'Kvant MB/s':>11} {'llama.cpp MB/s':>15} {'ratio':>7}")
        os.environ.setdefault("LLAMA_LOG_LEVEL", "error")
        for preset in args.presets:
            ours, ref = Path(tmp) / "ours.gguf", Path(tmp) / "ref.gguf"
            convert_sync(src, ours, preset)  # warm-up (JIT cache)
            llama_quantize(src, ref, preset)
            assert _digest(ours) == _digest(ref), f"{preset}: output differs from llama.cpp"
            t_ours, t_ref = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                convert_sync(src, ours, preset)
                t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                llama_quantize(src, ref, preset)
                t_ref.append(time.perf_counter() - t0)
            a, b = mb / min(t_ours), mb / min(t_ref)
            print(f"{preset:<8} {a:11.1f} {b:15.1f} {a / b:7.2f}", flush=True)


if __name__ == "__main__":
    main()
