"""Prefill mat-mat (``qgemm``) vs the token-by-token mat-vec (``matvec``) on the default model's layer
shapes, and full-model prefill with each, next to llama.cpp.

Per shape: one weight of the default model per (type, shape), 512 tokens of activations, best of
``--repeat`` runs, 1 and 2 Numba threads, both kernels timed alternately in the same process (the
machine is shared, so only the side-by-side ratios are meaningful).  Outputs are checked equal bit
for bit before timing.

End to end: the same 512-token prompt prefilled (last-token logits, as llama.cpp computes them) with
Gemma3's layer mat-muls as they are (``matvec``) and with ``engine.models.gemma3._mm`` patched in
this process only to call ``qgemm`` for more than one token; the two logits are checked identical;
then llama.cpp (llama-cpp-python, if installed) on the same ids and thread count.

Run:  NUMBA_NUM_THREADS=2 python benchmarks/bench_qgemm.py [--repeat 5] [--no-e2e] [--no-llama]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_MODEL = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"
TEXT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "logits" / "gemma3_270m_q4_k_m.npz"
TYPE_NAMES = {2: "Q4_0", 6: "Q5_0", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}


def prompt_ids(n: int) -> np.ndarray:
    return np.resize(np.load(TEXT)["tokens"], n).astype(np.int32)


def layer_weights(path: Path):
    """One repacked weight per (type, shape) of the model's layers, with its role and count."""
    from engine.gguf import open_gguf
    from engine.runtime.kernels import repack

    m = open_gguf(path)
    found: dict[tuple[int, tuple[int, ...]], list] = {}
    for t in m.tensors:
        if t.name.startswith("blk.") and t.type in TYPE_NAMES and len(t.dims) == 2:
            key = (t.type, t.dims)
            if key not in found:
                cols, rows = t.dims
                w = repack(np.asarray(m.raw(t.name)), t.type, rows, cols)
                found[key] = [t.name.split(".", 2)[2].removesuffix(".weight"), w, 0]
            found[key][2] += 1
    return sorted(found.values(), key=lambda v: (v[1].qtype, v[1].rows, v[1].cols))


def best_pair(f, g, repeat: int) -> tuple[float, float]:
    tf, tg = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        t1 = time.perf_counter()
        g()
        tg.append(time.perf_counter() - t1)
        tf.append(t1 - t0)
    return min(tf), min(tg)


def bench_shapes(path: Path, n_tok: int, repeat: int, threads: list[int]) -> float:
    import numba

    from engine.runtime.kernels import matvec, quantize_act
    from engine.runtime.kernels.qgemm import qgemm

    rng = np.random.default_rng(0)
    print(f"per weight, {n_tok} tokens, best of {repeat} (GFLOP/s = 2·rows·cols·tokens / time)")
    print(
        "| weight | type | rows×cols | ×layers | threads | matvec ms | qgemm ms "
        "| matvec GFLOP/s | qgemm GFLOP/s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = {t: [0.0, 0.0] for t in threads}
    for role, w, count in layer_weights(path):
        x = rng.standard_normal((n_tok, w.cols)).astype(np.float32)
        act = quantize_act(w, x)
        a, b = matvec(w, x, act=act), qgemm(w, x, act=act)
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"{role}: qgemm != matvec"
        for nt in threads:
            numba.set_num_threads(nt)
            tm, tq = best_pair(
                lambda w=w, x=x, act=act: matvec(w, x, act=act),
                lambda w=w, x=x, act=act: qgemm(w, x, act=act),
                repeat,
            )
            gf = 2.0 * w.rows * w.cols * n_tok / 1e9
            total[nt][0] += tm * count
            total[nt][1] += tq * count
            print(
                f"| {role} | {w.qtype} | {w.rows}×{w.cols} | {count} | {nt} | {tm * 1e3:.1f} "
                f"| {tq * 1e3:.1f} | {gf / tm:.1f} | {gf / tq:.1f} | {tm / tq:.2f}x |"
            )
    numba.set_num_threads(max(threads))
    for nt, (tm, tq) in total.items():
        print(
            f"all layer mat-muls of a {n_tok}-token prefill, {nt} thread(s): matvec {tm:.2f} s, "
            f"qgemm {tq:.2f} s ({tm / tq:.2f}x; mat-mul-only bound {n_tok / tm:.0f} -> "
            f"{n_tok / tq:.0f} tok/s)"
        )
    return total[max(threads)][1]


def bench_e2e(path: Path, n_tok: int, repeat: int) -> tuple[float, float]:
    import engine.models.gemma3 as g
    from engine.gguf import open_gguf
    from engine.models import load_model
    from engine.runtime.kernels.qgemm import qgemm

    model = load_model(open_gguf(path), n_ctx=2048)
    ids = prompt_ids(n_tok)
    orig = g._mm

    def mm_qgemm(w, x, limit=None):
        return qgemm(w, x) if limit is None and x.shape[0] > 1 else orig(w, x, limit)

    def prefill():
        model.reset()
        t0 = time.perf_counter()
        logits = model.forward(ids, 0, last_only=True)
        return time.perf_counter() - t0, logits

    model.forward(ids[:8], 0)  # compile / warm up
    for fn in (orig, mm_qgemm):  # compile both paths at the full size
        g._mm = fn
        prefill()
    g._mm = orig
    best = {"matvec": [1e9, None], "qgemm": [1e9, None]}
    try:
        for _ in range(repeat):  # alternate, so that both see the same machine load
            for name, fn in (("matvec", orig), ("qgemm", mm_qgemm)):
                g._mm = fn
                dt, logits = prefill()
                if dt < best[name][0]:
                    best[name] = [dt, logits]
    finally:
        g._mm = orig
    same = np.array_equal(best["matvec"][1], best["qgemm"][1])
    print(f"prefill logits with qgemm == with matvec, bit for bit: {same}")
    for name in best:
        print(f"kvant ({name:6s}) prefill {n_tok / best[name][0]:7.1f} tok/s")
    return n_tok / best["matvec"][0], n_tok / best["qgemm"][0]


def bench_llama(path: Path, n_tok: int, threads: int, repeat: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = prompt_ids(n_tok).tolist()
    llm.eval(ids[:8])
    best = 1e9
    for _ in range(repeat):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        best = min(best, time.perf_counter() - t0)
    return n_tok / best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-llama", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    bench_shapes(a.model, a.tokens, a.repeat, sorted({1, a.threads}))
    if not a.no_e2e:
        mv, qg = bench_e2e(a.model, a.tokens, max(2, a.repeat // 2))
        print(f"qgemm / matvec prefill: {qg / mv:.2f}x")
        if not a.no_llama:
            try:
                lp = bench_llama(a.model, a.tokens, a.threads, max(2, a.repeat // 2))
                print(f"llama.cpp        prefill {lp:7.1f} tok/s ({a.threads} threads)")
                print(f"ratio to llama.cpp: matvec {mv / lp:.2f}x, qgemm {qg / lp:.2f}x")
            except ImportError:
                print("llama-cpp-python not installed: no side-by-side")
    return 0


if __name__ == "__main__":
    sys.exit(main())
