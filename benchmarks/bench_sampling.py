"""Time per sampled token of the host sampler on a 262,144-token vocabulary (Gemma 3's).

Every decoded token of a chat runs the sampler over the whole logits vector (on the CPU, or where
the output layer is on the CPU); llama.cpp's default chain starts with top-k 40.  Compares the top-k
kernel (engine/runtime/kernels/topk.py) with its NumPy reference (argpartition), and shows the
greedy path and the chain on the 40 candidates a GPU hands over (TopLogits).

With ``--chat``, also the decode speed of the default model answering with the default chain
(128 tokens, seeds 0-3, best of the four), with the kernel and with the NumPy top-k.

Run:  NUMBA_NUM_THREADS=2 python benchmarks/bench_sampling.py [--chat]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _best(fn, repeat: int = 300) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best * 1e3


def _chat(rows: list[tuple[str, float]]) -> None:
    import engine
    from engine.library import default_model_path
    from engine.paths import KvantPaths
    from engine.runtime import sampling

    m = engine.open_model(default_model_path(KvantPaths.default()), n_ctx=512)
    ids = m.tokenize("Write a long story about a lighthouse keeper and the sea.")
    kernel_max = sampling._TOP_K_KERNEL_MAX
    for name, limit in (("kernel", kernel_max), ("NumPy", 0), ("kernel", kernel_max)):
        sampling._TOP_K_KERNEL_MAX = limit
        best = 0.0
        for seed in range(4):
            *_, done = m.generate(ids, seed=seed, max_tokens=128)
            best = max(best, done.decode_tok_s or 0.0)
        rows.append((f"default model, default chain, top-k by {name}: decode tok/s", best))
    sampling._TOP_K_KERNEL_MAX = kernel_max
    m.close()


def main() -> None:
    import argparse

    import numpy as np

    from engine.runtime import sampling
    from engine.runtime.kernels.topk import top_k, top_k_ref
    from engine.runtime.sampling import Sampler, SamplingParams, TopLogits

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chat", action="store_true")
    args = ap.parse_args()
    logits = (3 * np.random.default_rng(0).standard_normal(262_144)).astype(np.float32)
    recent = list(range(64))
    default = Sampler(SamplingParams(seed=1))
    greedy = Sampler(SamplingParams(temperature=0.0))
    ids = top_k(logits, 40)
    top = TopLogits(ids, logits[ids], logits.size)
    rows = [
        ("top-k 40: kernel", _best(lambda: top_k(logits, 40))),
        ("top-k 40: NumPy reference", _best(lambda: top_k_ref(logits, 40))),
        ("default chain, whole vector", _best(lambda: default.sample(logits, recent))),
    ]
    kernel_max = sampling._TOP_K_KERNEL_MAX
    sampling._TOP_K_KERNEL_MAX = 0  # the chain with the reference top-k
    rows.append(("default chain, whole vector, NumPy top-k", _best(lambda: default.sample(logits, recent))))
    sampling._TOP_K_KERNEL_MAX = kernel_max
    rows += [
        ("default chain, 40 candidates from a GPU", _best(lambda: default.sample(top, recent))),
        ("greedy, whole vector", _best(lambda: greedy.sample(logits, recent))),
    ]
    if args.chat:
        _chat(rows)
    print("| sampler step (262,144 logits) | ms per token (tok/s where said) |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
