"""Generate the llama.cpp oracle fixtures for the Gemma 3 forward pass (tests/fixtures/logits/).

Runs llama.cpp (through ``llama-cpp-python``, never a dependency of Kvant or of its tests) on the
default model over ``tests/fixtures/logits/text.txt`` and stores, compactly:

- ``tokens``: the text's token ids as llama.cpp tokenizes it (with BOS);
- per position ``i`` (the distribution of token ``i + 1``): the top-64 token ids, their
  log-probabilities and the log-sum-exp of the raw logits (``top_ids``, ``top_logp``, ``lse``);
- the full raw logits at a few positions (``full_pos``, ``full_logits``);
- 10 greedy 64-token continuations of 10 short prompts (``prompt_ids`` ragged in
  ``prompt_flat``/``prompt_len``, continuations in ``cont_ids``).

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

    prompt_ids: list[list[int]] = []
    cont_ids = np.empty((len(PROMPTS), N_CONT), np.int32)
    for j, prompt in enumerate(PROMPTS):
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        prompt_ids.append(ids)
        llm.reset()
        llm.eval(ids)
        for t in range(N_CONT):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            cont_ids[j, t] = nxt
            llm.eval([nxt])
        print(f"{prompt!r} -> {llm.detokenize(cont_ids[j].tolist()).decode('utf-8', 'replace')!r}")

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
        llama_cpp_version=np.array(llama_cpp.__version__),
        n_ctx=np.array(N_CTX),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
