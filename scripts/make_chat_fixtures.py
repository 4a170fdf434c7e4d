"""Record llama.cpp's greedy chat continuations on the default model (the oracle for tests/test_model.py),
and its greedy continuations of plain text (``Model.complete``, for base models such as this one).

Needs llama-cpp-python (not a Kvant dependency). Prompts are Gemma's turn format, which llama.cpp's
own llm_chat_apply_template produces for these messages (checked in tests/test_chat_template.py).

Usage: python scripts/make_chat_fixtures.py [MODEL.gguf]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "chat" / "gemma3_greedy.json"
OUT_COMPLETE = ROOT / "tests" / "fixtures" / "chat" / "gemma3_complete.json"
N_TOKENS = 24
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "user", "content": "Count from one to five."},
        {"role": "assistant", "content": "One, two, three, four, five."},
        {"role": "user", "content": "Now backwards."},
    ],
]

# Conversations continued as plain text, and that text (engine.runtime.model.completion_text): the system
# prompt first, the model's turns appended as written, other turns on a new line.
COMPLETIONS = [
    ([{"role": "user", "content": "def reverse_string(s):"}], "def reverse_string(s):"),
    (
        [
            {"role": "system", "content": "A list of countries and their capitals."},
            {"role": "user", "content": "France: Paris\nSpain:"},
        ],
        "A list of countries and their capitals.\nFrance: Paris\nSpain:",
    ),
    (
        [
            {"role": "user", "content": "The capital of France is"},
            {"role": "assistant", "content": " Paris."},
            {"role": "user", "content": "The capital of Italy is"},
        ],
        "The capital of France is Paris.\nThe capital of Italy is",
    ),
]


def greedy(llm, ids: list[int]) -> list[int]:
    import llama_cpp

    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(out) >= N_TOKENS:
            break
        out.append(int(tok))
    return out


def gemma_prompt(messages: list[dict[str, str]]) -> str:
    parts = []
    for m in messages:
        role = "model" if m["role"] == "assistant" else m["role"]
        parts.append(f"<start_of_turn>{role}\n{m['content']}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


def record(llm, model: str, prompts: list, out: Path, special: bool) -> None:
    """llama.cpp's greedy continuation of each (messages, prompt text) into ``out``."""
    import llama_cpp

    cases = []
    for messages, prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=special)
        tokens = greedy(llm, ids)
        cases.append(
            {
                "messages": messages,
                "prompt": prompt,
                "prompt_ids": ids,
                "output_ids": tokens,
                "output_text": llm.detokenize(tokens).decode("utf-8", errors="replace"),
            }
        )
    doc = {"llama_cpp_version": llama_cpp.__version__, "model": Path(model).name, "cases": cases}
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    print(f"wrote {out}")


def main() -> int:
    import llama_cpp

    model = (
        sys.argv[1]
        if len(sys.argv) > 1
        else str(Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf")
    )
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=2, verbose=False)
    chats = [(messages, gemma_prompt(messages)) for messages in CONVERSATIONS]
    record(llm, model, chats, OUT, special=True)
    record(llm, model, COMPLETIONS, OUT_COMPLETE, special=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
