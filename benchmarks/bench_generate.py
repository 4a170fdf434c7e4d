"""Generation speed of the Gemma 3 CPU engine on the default model, next to llama.cpp.

prefill: one 512-token prompt (logits of the last token only, as llama.cpp computes them);
decode: 128 tokens one at a time after it.  llama.cpp (llama-cpp-python, if installed) runs the
same token ids with the same thread count.  Also prints where decode time goes, per weight type.

Run:  NUMBA_NUM_THREADS=2 python benchmarks/bench_generate.py [--threads 2] [--no-llama]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_MODEL = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"
TEXT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "logits" / "gemma3_270m_q4_k_m.npz"


def prompt_ids(n: int) -> np.ndarray:
    toks = np.load(TEXT)["tokens"]
    return np.resize(toks, n).astype(np.int32)


def bench_kvant(path: Path, n_prompt: int, n_gen: int) -> tuple[float, float, dict]:
    from engine.gguf import open_gguf
    from engine.models import load_model
    from engine.runtime.kernels import fused

    model = load_model(open_gguf(path), n_ctx=2048)
    ids = prompt_ids(n_prompt)
    model.forward(ids[:8], 0)  # compile / warm up
    model.forward(ids[8:9], 8)
    model.reset()
    t0 = time.perf_counter()
    logits = model.forward(ids, 0, last_only=True)
    t_prefill = time.perf_counter() - t0

    # decode, with a per-weight-type profile: time the mat-vec calls the decode path binds
    prof: dict[str, float] = defaultdict(float)
    orig = fused.matvec_call

    def timed_call(w, buf, out):
        fn, args = orig(w, buf, out)
        key = w.qtype if w is not model.tok_embd else f"output ({w.qtype})"

        def timed(*a):
            t = time.perf_counter()
            fn(*a)
            prof[key] += time.perf_counter() - t

        return timed, args

    fused.matvec_call = timed_call
    model._dec = None  # rebuild the decode calls with the timed ones
    pos = n_prompt
    t0 = time.perf_counter()
    for _ in range(n_gen):
        nxt = int(np.argmax(logits[-1]))
        logits = model.forward(np.array([nxt]), pos)
        pos += 1
    t_decode = time.perf_counter() - t0
    fused.matvec_call = orig
    model._dec = None
    prof["other (norms, rope, attention, python)"] = t_decode - sum(prof.values())
    return n_prompt / t_prefill, n_gen / t_decode, {k: v / t_decode for k, v in prof.items()}


def bench_llama(path: Path, n_prompt: int, n_gen: int, threads: int) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = prompt_ids(n_prompt).tolist()
    llm.eval(ids[:8])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t_prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_vocab = llm.n_vocab()
    for _ in range(n_gen):
        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        llm.eval([int(np.argmax(last))])
    t_decode = time.perf_counter() - t0
    return n_prompt / t_prefill, n_gen / t_decode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-llama", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    pre, dec, prof = bench_kvant(a.model, a.prompt, a.gen)
    print(f"kvant     prefill {pre:7.1f} tok/s   decode {dec:6.1f} tok/s")
    for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
        print(f"   decode time in {k:42s} {100 * v:5.1f}%")
    if not a.no_llama:
        try:
            lp, ld = bench_llama(a.model, a.prompt, a.gen, a.threads)
            print(f"llama.cpp prefill {lp:7.1f} tok/s   decode {ld:6.1f} tok/s")
            print(f"ratio     prefill {pre / lp:7.2f}x        decode {dec / ld:6.2f}x")
        except ImportError:
            print("llama-cpp-python not installed: no side-by-side")
    return 0


if __name__ == "__main__":
    sys.exit(main())
