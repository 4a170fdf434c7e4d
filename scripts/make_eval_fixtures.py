"""Generate llama.cpp's perplexity on the shipped evaluation text (tests/fixtures/eval/).

Runs llama.cpp (through ``llama-cpp-python``, never a dependency of Kvant or of its tests) on the
default model over ``resources/devils-dictionary-a-c.txt`` and replicates ``llama-perplexity``
(tools/perplexity/perplexity.cpp, ``perplexity()``) exactly:

- the whole text tokenized once with ``add_special`` (BOS) and without special-token parsing;
- ``n_chunk = min(CHUNKS, len(tokens) // n_ctx)`` chunks of ``n_ctx`` tokens, each evaluated from an
  empty KV cache with its first token replaced by BOS;
- positions ``n_ctx/2 .. n_ctx-2`` scored: ``nll = log(Σ exp(l - max)) + max - l[next]`` with ``expf`` of
  float32 differences summed in double, like its ``log_softmax``;
- ``PPL = exp(mean nll)``, ``± = PPL · sqrt((mean(nll²) - mean(nll)²) / (count - 1))``.

For each context size in ``CONFIGS`` it stores, in ``llama_ppl_ctx{N}.npz``: ``tokens`` (the evaluated
tokens), ``nll`` (float64, per scored token, chunk after chunk), ``chunk_ppl`` (running PPL after each
chunk, as llama-perplexity prints it), ``ppl``, ``ppl_err``, ``n_tokens_text`` and ``text_sha256``;
and a readable summary in ``summary.json``.

Run:  python scripts/make_eval_fixtures.py [MODEL.gguf]
(default: ~/.local/share/kvant/models/gemma-3-270m-q4_k_m.gguf; a few minutes on 2 cores)
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "resources" / "devils-dictionary-a-c.txt"
OUT_DIR = ROOT / "tests" / "fixtures" / "eval"
DEFAULT_MODEL = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"

# (n_ctx, chunks): what the tests compare against (they may use a prefix of the chunks).
CONFIGS = ((512, 8), (128, 8))


def chunk_nll(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """llama.cpp's ``log_softmax(n_vocab, logits, tok)`` NLL for each row of ``scores``."""
    out = np.empty(len(targets), np.float64)
    for r, tok in enumerate(targets):
        row = scores[r].astype(np.float32)
        m = row.max()
        sum_exp = np.exp(row - m).sum(dtype=np.float64)
        out[r] = -(float(row[tok] - m) - math.log(sum_exp))
    return out


def run(llm, tokens: list[int], n_ctx: int, n_chunk: int) -> dict:
    bos = llm.token_bos()
    add_bos = tokens[0] == bos  # tokenize(add_bos=True) adds one only where the vocabulary asks for it
    first = n_ctx // 2
    nll_all: list[np.ndarray] = []
    chunk_ppl = []
    for i in range(n_chunk):
        ids = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if add_bos:
            ids[0] = bos
        llm.reset()
        llm.eval(ids)
        scores = np.asarray(llm.scores[:n_ctx], dtype=np.float32)
        targets = np.asarray(tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx])
        nll_all.append(chunk_nll(scores[first : n_ctx - 1], targets))
        running = math.exp(float(np.concatenate(nll_all).mean()))
        chunk_ppl.append(running)
        print(f"  n_ctx={n_ctx} [{i + 1}]{running:.4f}", flush=True)
    nll = np.concatenate(nll_all)
    mean = float(nll.mean())
    var = float((nll * nll).mean() - mean * mean)
    ppl = math.exp(mean)
    return {
        "tokens": np.asarray(tokens[: n_chunk * n_ctx], np.int32),
        "nll": nll,
        "chunk_ppl": np.asarray(chunk_ppl),
        "ppl": ppl,
        "ppl_err": ppl * math.sqrt(var / (len(nll) - 1)),
    }


def main(argv: list[str]) -> int:
    import llama_cpp

    model_path = Path(argv[0]) if argv else DEFAULT_MODEL
    text = TEXT.read_text(encoding="utf-8")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": model_path.name,
        "text": TEXT.name,
        "text_sha256": sha,
        "llama_cpp": llama_cpp.__version__,
    }
    for n_ctx, chunks in CONFIGS:
        llm = llama_cpp.Llama(
            str(model_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=2, verbose=False
        )
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        n_chunk = min(chunks, len(tokens) // n_ctx)
        print(f"n_ctx={n_ctx}: {len(tokens)} tokens, {n_chunk} chunks", flush=True)
        res = run(llm, tokens, n_ctx, n_chunk)
        np.savez_compressed(
            OUT_DIR / f"llama_ppl_ctx{n_ctx}.npz",
            n_tokens_text=np.int64(len(tokens)),
            text_sha256=np.array(sha),
            **res,
        )
        summary[f"ctx{n_ctx}"] = {
            "chunks": n_chunk,
            "tokens_in_text": len(tokens),
            "scored_tokens": len(res["nll"]),
            "ppl": res["ppl"],
            "ppl_err": res["ppl_err"],
            "chunk_ppl": [round(float(v), 6) for v in res["chunk_ppl"]],
        }
        print(f"n_ctx={n_ctx}: PPL = {res['ppl']:.4f} +/- {res['ppl_err']:.5f}", flush=True)
        del llm
    (OUT_DIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
