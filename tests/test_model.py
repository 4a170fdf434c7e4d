"""engine.open_model on the real default model: loading, tokens, logits, chat and plain-text completion
against llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.cli import run_cli
from engine.errors import Cancelled, ModelError
from engine.progress import CancelToken

FIXTURE = Path(__file__).parent / "fixtures" / "chat" / "gemma3_greedy.json"
COMPLETE_FIXTURE = Path(__file__).parent / "fixtures" / "chat" / "gemma3_complete.json"


@pytest.fixture(scope="module")
def model(default_model):
    events = []
    m = engine.open_model(default_model, n_ctx=512, progress=events.append)
    assert [e.message for e in events][-1] == "ready" and events[-1].fraction == 1.0
    yield m
    m.close()


def test_load_can_be_cancelled(default_model):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        engine.open_model(default_model, cancel=token)


def test_gpu_layers_without_a_usable_gpu_run_on_the_cpu_and_say_why(default_model, monkeypatch):
    """No numba-cuda / no NVIDIA GPU here (or the simulator switched off): the model still loads, on the CPU,
    and says why offload is unavailable."""
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    from engine.runtime.cuda import availability

    if availability().available:
        pytest.skip("a usable GPU is present: offload is tested in tests/test_cuda_*.py")
    with engine.open_model(default_model, n_ctx=64, n_gpu_layers=4) as m:
        assert m.offload.n_gpu_layers == 0
        assert m.offload.message().startswith("GPU offload unavailable: ")
        assert m.offload.reason
        assert m.logits(m.tokenize("Hi")).shape[1] == m.n_vocab


def test_tokenize_and_detokenize(model):
    ids = model.tokenize("Hello, world!")
    assert ids[0] == model.tokenizer.bos_id
    assert model.detokenize(ids[1:]) == "Hello, world!"
    assert model.tokenize("<start_of_turn>", add_bos=False, special=True) == [105]


def test_logits_shape_and_determinism(model):
    ids = model.tokenize("The quick brown fox")
    a = model.logits(ids)
    assert a.shape == (len(ids), model.n_vocab) and a.dtype == np.float32 and np.isfinite(a).all()
    b = model.logits(ids)
    np.testing.assert_array_equal(a, b)


def test_chat_greedy_matches_llama_cpp(model):
    """Identical greedy tokens and text on every chat case: the engine computes llama.cpp's logits
    bit for bit (batched prompt, one-token decode), so not even a near-tie parts them.

    (The issue's bar, >= 9 of 10 identical 64-token continuations, is tested in test_gemma3.py.)
    """
    cases = json.loads(FIXTURE.read_text())["cases"]
    for case in cases:
        assert model.chat_prompt(case["messages"]) == case["prompt_ids"]
        events = list(model.chat(case["messages"], temperature=0.0, max_tokens=len(case["output_ids"])))
        tokens = [e.token for e in events if e.kind == "token"]
        done = events[-1]
        assert done.finish_reason == "length" and done.decode_tok_s > 0 and done.ttft_s > 0
        assert tokens == case["output_ids"]
        assert "".join(e.text for e in events) == case["output_text"]


def test_complete_greedy_matches_llama_cpp(model):
    """A conversation continued as plain text (no chat template; what a base model such as the
    default one is for): the text, its tokens and llama.cpp's greedy continuation, token for token."""
    from engine.runtime.model import completion_text

    assert model.info.base_model  # no chat template in the file, no "it" / "instruct" in its name
    for case in json.loads(COMPLETE_FIXTURE.read_text())["cases"]:
        assert completion_text(case["messages"]) == case["prompt"]
        assert model.tokenize(case["prompt"]) == case["prompt_ids"]
        events = list(model.complete(case["messages"], temperature=0.0, max_tokens=len(case["output_ids"])))
        assert [e.token for e in events if e.kind == "token"] == case["output_ids"]
        assert "".join(e.text for e in events) == case["output_text"]
    # the default model completes code; inside Gemma's chat template it repeats the request instead
    assert "return s[::-1]" in json.loads(COMPLETE_FIXTURE.read_text())["cases"][0]["output_text"]


def test_completion_text():
    from engine.runtime.model import completion_text

    assert completion_text([{"role": "user", "content": "def f(x):"}]) == "def f(x):"
    turns = [
        {"role": "system", "content": "Capitals."},
        {"role": "user", "content": "France is"},
        {"role": "assistant", "content": " Paris.\n"},
        {"role": "user", "content": "Spain is"},
        {"role": "assistant", "content": " Madrid."},
        {"role": "user", "content": "Italy is"},
    ]
    assert completion_text(turns) == "Capitals.\nFrance is Paris.\nSpain is Madrid.\nItaly is"
    with pytest.raises(ModelError, match="no text"):
        completion_text([])


def test_base_model_detection():
    """No chat template and nothing in the name, fine-tune label, tags or file name that says tuned:
    a base model; any of those: not."""
    from engine.gguf.info import looks_like_base_model

    class Header:
        def __init__(self, stem: str, **kv):
            self.path = Path(f"/models/{stem}.gguf")
            self.kv = kv

        def get(self, key, default=None):
            return self.kv.get(key, default)

    assert looks_like_base_model(Header("gemma-3-270m-q4_k_m", **{"general.name": "Gemma 3 270m"}))
    assert looks_like_base_model(Header("Meta-Llama-3-8B.Q4_K_M", **{"general.name": "Meta Llama 3 8B"}))
    assert looks_like_base_model(Header("italian-gpt2", **{"general.tags": ["text-generation"]}))
    assert not looks_like_base_model(Header("x", **{"tokenizer.chat_template": "{{ messages }}"}))
    assert not looks_like_base_model(Header("gemma-3-270m-it-Q4_K_M"))
    assert not looks_like_base_model(Header("m", **{"general.name": "Llama 3.2 1B Instruct"}))
    assert not looks_like_base_model(Header("m", **{"general.finetune": "chat"}))
    assert not looks_like_base_model(Header("m", **{"general.tags": ["sft", "dpo"]}))
    assert not looks_like_base_model(Header("tinyllama-1.1b-chat-v1.0.Q4_K_M"))


def test_cli_raw_continues_the_text_and_a_base_model_gets_a_note(default_model, capsys):
    case = json.loads(COMPLETE_FIXTURE.read_text())["cases"][0]
    args = ["chat", str(default_model), "--prompt", case["prompt"], "--temperature", "0", "--ctx", "256"]
    assert run_cli([*args, "--max-tokens", "8", "--raw"]) == 0
    out = capsys.readouterr()
    assert case["output_text"].startswith(out.out.rstrip("\n")) and "return" in out.out
    assert "base (pretrained) model" not in out.err
    assert run_cli([*args, "--max-tokens", "1"]) == 0
    err = capsys.readouterr().err
    assert "base (pretrained) model" in err and "try --raw" in err


def test_follow_up_turn_reuses_the_cache(model):
    case = json.loads(FIXTURE.read_text())["cases"][0]
    model.reset()
    list(model.chat(case["messages"], temperature=0.0, max_tokens=4))
    follow = [
        *case["messages"],
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Why?"},
    ]
    done = list(model.chat(follow, temperature=0.0, max_tokens=2))[-1]
    assert done.n_cached >= len(case["prompt_ids"])


def test_context_overflow_is_an_error(model):
    with pytest.raises(ModelError, match="context window"):
        list(model.generate(list(range(10, 10 + model.n_ctx + 1)), max_tokens=1))


def test_cli_chat_json(default_model, capsys):
    code = run_cli(
        [
            "chat",
            str(default_model),
            "--prompt",
            "Write a haiku about the sea.",
            "--temperature",
            "0",
            "--max-tokens",
            "6",
            "--ctx",
            "256",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    expected = json.loads(FIXTURE.read_text())["cases"][1]
    assert data["generated_tokens"] == 6 and data["finish_reason"] == "length"
    assert expected["output_text"].startswith(data["text"])
    assert data["decode_tok_s"] > 0 and data["time_to_first_token_s"] > 0


def test_cli_chat_records_planner_calibration(default_model, capsys, tmp_path, monkeypatch):
    """An answer of >= 16 tokens records its decode speed next to the planner's prediction."""
    from engine.cli.chat import CALIBRATE_MIN_TOKENS
    from engine.fit import CalibrationStore
    from engine.paths import KvantPaths

    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "home"))
    store = CalibrationStore.default(KvantPaths.default())
    base = [
        "chat",
        str(default_model),
        "--prompt",
        "Tell me about the sea.",
        "--temperature",
        "0",
        "--ctx",
        "256",
    ]
    assert run_cli([*base, "--max-tokens", str(CALIBRATE_MIN_TOKENS - 1), "--json"]) == 0
    assert store.load() == []  # too short to count
    capsys.readouterr()
    assert run_cli([*base, "--max-tokens", str(CALIBRATE_MIN_TOKENS), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (rec,) = store.load()
    assert rec.measured_tok_s == pytest.approx(data["decode_tok_s"]) and rec.n_ctx == 256
    assert rec.predicted_tok_s > 0 and rec.quant == "Q4_K_M"


def test_generation_runs_with_the_models_threads_on_any_thread(model, monkeypatch):
    """Numba's thread count is per calling thread: a chat consumed on a worker thread (the app's) must
    still use the model's count, not Numba's default for new threads."""
    import threading

    import numba

    from engine.runtime.model import default_threads

    assert 1 <= default_threads() <= numba.config.NUMBA_NUM_THREADS
    monkeypatch.setattr(model, "threads", 1)
    seen = []

    def consume():
        for _ in model.generate(model.tokenize("Hello"), max_tokens=2, temperature=0.0):
            seen.append(numba.get_num_threads())

    t = threading.Thread(target=consume)
    t.start()
    t.join(120)
    assert seen and set(seen) == {1}
    model.reset()


def test_a_failed_forward_leaves_nothing_in_the_cache(model):
    """A batch that fails after writing some layers' keys (here: an observer that raises) must not
    leave them behind: appending skips the cache truncation, so the model forgets them itself."""
    net = model.net
    ids = np.asarray(model.tokenize("The quick brown fox jumps over the lazy dog"), np.int32)
    net.reset()
    net.forward(ids[:4], 0)
    want = net.forward(ids[4:], 4, last_only=True)  # (llama.cpp's numbers depend on the batches too)
    net.reset()
    net.forward(ids[:4], 0)

    def fail(name, x):
        if name.startswith("blk.3."):
            raise RuntimeError("stop")

    net.observer = fail
    try:
        with pytest.raises(RuntimeError, match="stop"):
            net.forward(ids[4:], 4)
    finally:
        net.observer = None
    assert net.n_past == 4
    assert all((sp < 4).all() for sp in net.cache.slot_pos)
    got = net.forward(ids[4:], 4, last_only=True)
    np.testing.assert_array_equal(got, want)
