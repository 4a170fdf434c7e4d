"""How fast Kvant opens a GGUF file, against llama.cpp's gguf-py reader, on the default model.

Usage: python benchmarks/bench_gguf.py [MODEL] [--repeat N] [--skip-gguf-py]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    from engine.gguf import open_gguf, read_model_info
    from engine.library import ensure_default_model
    from engine.paths import KvantPaths

    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-gguf-py", action="store_true")
    args = ap.parse_args()
    if args.model:
        path = Path(args.model)
    else:
        gen = ensure_default_model(KvantPaths.default())
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                path = Path(stop.value.path)
                break

    def ours_open():
        with open_gguf(path) as m:
            m.get("tokenizer.ggml.tokens")

    ours = _time(ours_open, args.repeat)
    info = _time(lambda: read_model_info(path), args.repeat)
    print(f"model: {path.name} ({path.stat().st_size / 2**20:.0f} MiB)")
    print(f"kvant open + metadata: median {statistics.median(ours):.3f} s (min {min(ours):.3f})")
    print(f"kvant model info:      median {statistics.median(info):.3f} s")
    if not args.skip_gguf_py:
        from gguf import GGUFReader

        ref = _time(lambda: GGUFReader(path), 1)[0]
        print(f"gguf-py GGUFReader:    {ref:.2f} s  → kvant is {ref / statistics.median(ours):.0f}× faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
