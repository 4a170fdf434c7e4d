"""Host time per decoded token with every layer on the GPU, the device's own work taken out.

A decoded token on the GPU is the host's Python (generation loop, model bookkeeping, the sampler,
the per-token copies' set-up) plus the device's graph.  The 50%-of-bandwidth bar of issue #7 leaves
~150 us per token for the default model on an H100, so the host's share matters; this measures it
without a GPU: the default model is offloaded to Numba's CUDA simulator and each device group's run
(``decode.Group.run``: the copies, the graph launch and the wait) returns at once with a fixed
result, so what is timed is everything else, along the real code path.

Run:  python benchmarks/bench_gpu_host.py [--tokens 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import numpy as np

    import engine
    from engine.library import default_model_path
    from engine.paths import KvantPaths
    from engine.runtime.cuda import decode as dec
    from engine.runtime.cuda.layers import GpuLayers
    from engine.runtime.generate import generate
    from engine.runtime.sampling import SamplingParams, TopLogits

    m = engine.open_model(default_model_path(KvantPaths.default()), n_ctx=2048, n_gpu_layers="all")
    print(m.offload.message())
    net = m.net
    n_vocab = net.n_vocab
    top_ids = {k: np.arange(k, dtype=np.int64) + 100 for k in (1, 40, 64)}
    top_vals = {k: np.linspace(5, 1, k).astype(np.float32) for k in (1, 40, 64)}

    def run(self, x, pos, want_logits, top_k=0):  # the device's work, taken out
        if top_k:
            return TopLogits(top_ids[top_k], top_vals[top_k], n_vocab), True
        return (np.zeros((1, n_vocab), np.float32) if want_logits else x), want_logits

    forward = GpuLayers.forward

    def gpu_forward(self, x, pos0, last_only, want_logits, see, top_k=0):
        if x.shape[0] == 1:
            return forward(self, x, pos0, last_only, want_logits, see, top_k)
        self.truncate(pos0)  # the prompt (batched path): not what is measured
        self.n_past = pos0 + x.shape[0]
        return np.zeros((1, n_vocab), np.float32), True

    dec.Group.run = run
    GpuLayers.forward = gpu_forward
    ids = m.tokenize("Hello there, how are you?")
    for name, params in (
        ("greedy", SamplingParams(temperature=0.0, max_tokens=args.tokens)),
        ("default chain", SamplingParams(seed=1, max_tokens=args.tokens)),
    ):
        best = float("inf")
        for _ in range(args.repeat):
            net.reset()
            t0 = time.perf_counter()
            n = sum(e.kind == "token" for e in generate(net, m.tokenizer, ids, params))
            best = min(best, (time.perf_counter() - t0) / n)
        print(f"{name}: {best * 1e6:.1f} us of host time per token ({n} tokens, best of {args.repeat})")
    m.close()


if __name__ == "__main__":
    main()
