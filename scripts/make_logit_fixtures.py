"""Generate the llama.cpp oracle fixtures for the Gemma 3 forward pass (tests/fixtures/logits/).

Runs llama.cpp (through ``llama-cpp-python``, never a dependency of Kvant or of its tests) on the
default model over ``tests/fixtures/logits/text.txt`` and stores, compactly:

- ``tokens``: the text's token ids as llama.cpp tokenizes it (with BOS);
- per position ``i`` (the distribution of token ``i + 1``): the top-64 token ids, their
  log-probabilities and the log-sum-exp of the raw logits (``top_ids``, ``top_logp``, ``lse``);
- the full raw logits at a few positions (``full_pos``, ``full_logits``);
- 10 greedy 64-token continuations of 10 short prompts (``prompt_ids`` ragged in
  ``prompt_flat``/``prompt_len``, continuations in ``cont_ids``);
- llama.cpp's own noise floor: the same text and prompts run again with ``n_batch=1`` (every token
  through the decode kernels instead of the batched prefill kernels, otherwise the same model and
  settings): per position the KL of that run against the reference (``decode_kl``, same formula as
  the tests: top-64 plus a remainder bucket) and whether its top-1 agrees (``decode_top1``), and its
  greedy continuations (``decode_cont_ids``).  Rounding differences between two llama.cpp kernel
  paths alone give these numbers; they tell how close "as close as llama.cpp to itself" is.

Run:  python scripts/make_logit_fixtures.py [MODEL.gguf]
(default: ~/.local/share/kvant/models/gemma-3-270m-q4_k_m.gguf)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "logits"
TEXT = FIXTURE_DIR / "text.txt"
OUT = FIXTURE_DIR / "gemma3_270m_q4_k_m.npz"
DEFAULT_MODEL = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"

N_CTX = 2048
TOP_K = 64
N_CONT = 64
FULL_POSITIONS = (0, 257, 700, -1)
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The quick brown fox",
    "In the year 1905, Albert Einstein",
    "A recipe for pancakes: first,",
    "The most important rule of writing is",
    "Photosynthesis is the process by which",
)


def _log_softmax_top(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    x = logits.astype(np.float64)
    m = x.max()
    lse = float(m + np.log(np.exp(x - m).sum()))
    idx = np.argpartition(-x, k)[:k]
    idx = idx[np.argsort(-x[idx], kind="stable")]
    return idx.astype(np.int32), (x[idx] - lse).astype(np.float32), lse


def kl_top64(logits: np.ndarray, top_ids: np.ndarray, top_logp: np.ndarray) -> float:
    """KL(p_ref || p) over the reference's top-64 tokens plus one bucket for the rest (as the tests)."""
    x = logits.astype(np.float64)
    m = x.max()
    lp = x - (m + np.log(np.exp(x - m).sum()))
    ours = lp[top_ids]
    ref = top_logp.astype(np.float64)
    p_ref = np.exp(ref)
    rest_ref = max(1e-12, 1.0 - p_ref.sum())
    rest_ours = max(1e-12, 1.0 - np.exp(ours).sum())
    return float((p_ref * (ref - ours)).sum() + rest_ref * (np.log(rest_ref) - np.log(rest_ours)))


def _continuations(llm, prompt_ids: list[list[int]]) -> np.ndarray:
    out = np.empty((len(prompt_ids), N_CONT), np.int32)
    for j, ids in enumerate(prompt_ids):
        llm.reset()
        llm.eval(ids)
        for t in range(N_CONT):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out[j, t] = nxt
            llm.eval([nxt])
    return out


def main(argv: list[str]) -> int:
    import llama_cpp

    model_path = Path(argv[0]) if argv else DEFAULT_MODEL
    llm = llama_cpp.Llama(str(model_path), n_ctx=N_CTX, logits_all=True, n_threads=2, verbose=False)

    text = TEXT.read_text(encoding="utf-8")
    tokens = np.array(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False), dtype=np.int32)
    n = len(tokens)
    if n > N_CTX:
        raise SystemExit(f"text is {n} tokens, more than n_ctx={N_CTX}")
    print(f"text: {n} tokens")
    llm.reset()
    llm.eval(tokens.tolist())
    scores = np.asarray(llm.scores[:n], dtype=np.float32)

    top_ids = np.empty((n, TOP_K), np.int32)
    top_logp = np.empty((n, TOP_K), np.float32)
    lse = np.empty(n, np.float64)
    for i in range(n):
        top_ids[i], top_logp[i], lse[i] = _log_softmax_top(scores[i], TOP_K)
    full_pos = np.array([p % n for p in FULL_POSITIONS], np.int32)
    full_logits = scores[full_pos].copy()

    prompt_ids = [llm.tokenize(p.encode("utf-8"), add_bos=True, special=False) for p in PROMPTS]
    cont_ids = _continuations(llm, prompt_ids)
    for j, prompt in enumerate(PROMPTS):
        print(f"{prompt!r} -> {llm.detokenize(cont_ids[j].tolist()).decode('utf-8', 'replace')!r}")

    # llama.cpp against itself: every token through the decode path (n_batch=1)
    dec = llama_cpp.Llama(
        str(model_path), n_ctx=N_CTX, n_batch=1, n_ubatch=1, logits_all=True, n_threads=2, verbose=False
    )
    dec.reset()
    dec.eval(tokens.tolist())
    dscores = np.asarray(dec.scores[:n], dtype=np.float32)
    decode_kl = np.array([kl_top64(dscores[i], top_ids[i], top_logp[i]) for i in range(n)], np.float32)
    decode_top1 = np.argmax(dscores, axis=1) == top_ids[:, 0]
    decode_cont_ids = _continuations(dec, prompt_ids)
    same = sum(bool((a == b).all()) for a, b in zip(decode_cont_ids, cont_ids, strict=True))
    print(
        f"llama.cpp n_batch=1 vs batched: top-1 {decode_top1.mean():.4f}, mean KL {decode_kl.mean():.5f}, "
        f"{same}/{len(PROMPTS)} identical continuations"
    )

    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        tokens=tokens,
        top_ids=top_ids,
        top_logp=top_logp,
        lse=lse,
        full_pos=full_pos,
        full_logits=full_logits,
        prompt_flat=np.array([t for p in prompt_ids for t in p], np.int32),
        prompt_len=np.array([len(p) for p in prompt_ids], np.int32),
        cont_ids=cont_ids,
        decode_kl=decode_kl,
        decode_top1=decode_top1,
        decode_cont_ids=decode_cont_ids,
        llama_cpp_version=np.array(llama_cpp.__version__),
        n_ctx=np.array(N_CTX),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
