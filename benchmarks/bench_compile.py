"""First-use cost of every quantizer: Numba compile time (cold cache) and cache load time (warm).

    python benchmarks/bench_compile.py [--types Q4_K,IQ2_XS] [--json]

For each type a fresh Python process with an empty ``NUMBA_CACHE_DIR`` imports ``engine.quant`` and
times its first ``quantize`` (with an importance matrix where llama.cpp needs one) and its first
``dequantize`` of a 4×4096 matrix: that is the compile time a user pays once, the first time a
conversion uses the type.  A second process with the same (now filled) cache times the same calls:
what every later run pays (loading machine code from disk).  Types that share kernels (the legacy
family, the K-quants) are each measured alone, so each row is what that type costs by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import engine.quant as Q
t_import = time.perf_counter() - t0
name = sys.argv[1]
fmt = Q.format_of(name)
x = np.random.default_rng(0).standard_normal((4, 4096)).astype(np.float32)
im = np.ones(4096, np.float32) if fmt.needs_imatrix else None
t0 = time.perf_counter()
raw = Q.quantize(x, name, im)
t_q = time.perf_counter() - t0
t0 = time.perf_counter()
Q.dequantize(raw, name, x.shape)
t_d = time.perf_counter() - t0
print(json.dumps({"import_s": t_import, "quantize_s": t_q, "dequantize_s": t_d}))
"""


def _run(name: str, cache: str) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import engine.quant as Q

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=None, help="comma-separated (default: every quantizable type)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = args.types.split(",") if args.types else [s.name for s in Q.supported() if s.can_quantize]
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="kvant-numba-") as cache:
            cold = _run(name, cache)
            warm = _run(name, cache)
        rows.append({"type": name, "cold": cold, "warm": warm})
        if not args.json:
            print(
                f"| {name} | {cold['quantize_s']:.2f} | {cold['dequantize_s']:.2f} "
                f"| {warm['quantize_s']:.3f} | {warm['dequantize_s']:.3f} |",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
