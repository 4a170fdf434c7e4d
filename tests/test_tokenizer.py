"""Tokenizers: ids, detokenized text and special tokens identical to llama.cpp's (fixtures made by
scripts/make_tokenizer_fixtures.py with llama-cpp-python), on the default model (SentencePiece, 262,144
tokens) and on a tiny byte-level BPE vocabulary under 26 pre-tokenizer settings; streaming decode that
never splits a character; errors for what Kvant does not read."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ModelError
from engine.gguf import open_gguf
from engine.runtime.tokenizer import StreamDecoder, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"


def _load(name: str) -> dict:
    return json.loads(gzip.decompress((FIXTURES / name).read_bytes()))


def _corpus() -> dict[str, str]:
    with open(FIXTURES / "corpus.txt", encoding="utf-8", newline="") as f:
        chunks = ("\n" + f.read()).split("\n### ")[1:]
    cases = {}
    for i, chunk in enumerate(chunks):
        name, _, body = chunk.partition("\n")
        cases[name] = body[:-1] if i == len(chunks) - 1 and body.endswith("\n") else body
    return cases


def _mismatches(tok: Tokenizer, texts: dict[str, str], cases: list[dict]) -> tuple[int, list[str]]:
    checked, bad = 0, []
    for case in cases:
        text = texts[case["name"]]
        for key, want in case["ids"].items():
            add_bos, special = key[0] == "1", key[1] == "1"
            got = tok.encode(text, add_bos=add_bos, special=special)
            checked += 1
            if got != want:
                bad.append(f"{case['name']} add_bos={add_bos} special={special}: {got[:12]} != {want[:12]}")
            for skip, want_text in zip((False, True), case.get("detok", {}).get(key, ()), strict=False):
                want_text = text if want_text is None else want_text
                data = tok.detokenize(want, remove_special=skip, unparse_special=not skip)
                checked += 1
                if data.decode("utf-8", errors="surrogateescape") != want_text:
                    bad.append(f"{case['name']} detokenize {key} skip_special={skip}: {data[:40]!r}")
    return checked, bad


def _check_facts(tok: Tokenizer, facts: dict) -> None:
    assert tok.n_vocab == facts["n_vocab"]
    assert (tok.bos_id if tok.bos_id is not None else -1) == facts["bos"]
    assert (tok.eos_id if tok.eos_id is not None else -1) == facts["eos"]
    assert sorted(tok.eog_ids) == facts["eog"]
    assert [i for i in range(tok.n_vocab) if tok.is_control(i)] == facts["control"]
    assert tok.add_bos == facts["add_bos"] and tok.add_eos == facts["add_eos"]


# --- the default model (SentencePiece) ---------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(default_model) -> Tokenizer:
    with open_gguf(default_model) as model:
        return Tokenizer.from_gguf(model)


@pytest.fixture(scope="module")
def gemma_fixture() -> dict:
    return _load("gemma3.json.gz")


def test_fixtures_match_the_corpus(gemma_fixture):
    texts = gemma_fixture["texts"]
    corpus = _corpus()
    assert {k: texts[k] for k in corpus} == corpus
    assert _load("bpe-tiny.json.gz")["texts"] == texts


def test_spm_ids_and_text_identical_to_llama_cpp(gemma, gemma_fixture):
    checked, bad = _mismatches(gemma, gemma_fixture["texts"], gemma_fixture["cases"])
    assert checked > 1000
    assert bad == [], f"{len(bad)} of {checked} differ:\n" + "\n".join(bad[:20])


def test_spm_special_tokens_as_llama_cpp(gemma, gemma_fixture):
    assert gemma.kind == "spm" and gemma.n_vocab == 262144
    _check_facts(gemma, gemma_fixture["facts"])
    eot = gemma.token_id("<end_of_turn>")
    assert eot in gemma.eog_ids and gemma.eos_id in gemma.eog_ids and gemma.eot_id == eot
    assert gemma.encode("<start_of_turn>user\n", add_bos=False, special=True)[0] == gemma.token_id(
        "<start_of_turn>"
    )
    assert gemma.token_id("<start_of_turn>") not in gemma.encode("<start_of_turn>user\n", add_bos=False)


def test_spm_pieces_are_raw_bytes(gemma):
    assert gemma.token_to_piece(gemma.token_id("<0xF0>")) == b"\xf0"
    assert gemma.token_to_piece(gemma.token_id("▁the")) == b" the"
    assert gemma.token_to_piece(gemma.bos_id) == b"<bos>"
    assert gemma.token_to_piece(gemma.bos_id, special=False) == b""


def test_spm_round_trip_where_llama_cpp_does(gemma, gemma_fixture):
    texts = gemma_fixture["texts"]
    round_trips = [c["name"] for c in gemma_fixture["cases"] if c["detok"]["00"][1] is None]
    assert len(round_trips) > 100
    for name in round_trips:
        text = texts[name]
        assert gemma.decode(gemma.encode(text, add_bos=False), skip_special=True) == text
        assert gemma.decode(gemma.encode(text), skip_special=True) == text


def test_spm_speed(gemma, gemma_fixture, default_model):
    text = "\n\n".join(gemma_fixture["texts"].values())[:4096]
    best = min(_timed(lambda: gemma.encode(text)) for _ in range(3))
    assert best < 0.1, f"encoding 4 KB took {best * 1000:.0f} ms"
    with open_gguf(default_model) as model:
        best = min(_timed(lambda: Tokenizer.from_gguf(model)) for _ in range(2))
    assert best < 0.5, f"building the 262k-token tokenizer took {best * 1000:.0f} ms"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@pytest.mark.parametrize(
    "text", ["héllo wörld", "日本語のテキスト", "🦙🤗👍🏽 🇺🇦", "👨‍👩‍👧‍👦 family", "ąčęėįšųūž 𝔘𝔫𝔦"]
)
def test_spm_stream_never_splits_a_character(gemma, text):
    _check_stream(gemma, text)


# --- byte-level BPE ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_fixture() -> dict:
    return _load("bpe-tiny.json.gz")


@pytest.fixture(scope="module")
def bpe_metadata() -> dict:
    with open_gguf(FIXTURES / "bpe-tiny.gguf") as model:
        return {key: model.get(key) for key in model.metadata}


def _variant(metadata: dict, pre: str, name: str) -> Tokenizer:
    return Tokenizer.from_metadata({**metadata, "tokenizer.ggml.pre": pre, "general.name": name})


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    with open_gguf(FIXTURES / "bpe-tiny.gguf") as model:
        return Tokenizer.from_gguf(model)


def test_bpe_variants_cover_the_presets(bpe_fixture):
    assert {"llama-bpe", "qwen2", "gpt-2", "default", "deepseek-llm", "deepseek-v3", "phi-3"} <= set(
        bpe_fixture["variants"]
    )


@pytest.mark.parametrize(
    "variant",
    [
        "llama-bpe",
        "qwen2",
        "gpt-2",
        "default",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "starcoder",
        "qwen35",
        "tekken",
        "gpt-4o",
        "chatglm-bpe",
        "poro-chat",
        "viking",
        "chameleon",
        "bailingmoe",
        "seed-coder",
        "kimi-k2",
        "afmoe",
        "tiny_aya",
        "exaone-moe",
        "youtu",
        "minicpm5",
        "jais-2",
        "phi-3",
    ],
)
def test_bpe_ids_and_text_identical_to_llama_cpp(bpe_fixture, bpe_metadata, variant):
    spec = bpe_fixture["variants"][variant]
    tok = _variant(bpe_metadata, spec["pre"], spec["name"])
    checked, bad = _mismatches(tok, bpe_fixture["texts"], spec["cases"])
    assert checked >= 2 * len(spec["cases"])
    assert bad == [], f"{len(bad)} of {checked} differ:\n" + "\n".join(bad[:20])
    _check_facts(tok, spec["facts"])


def test_bpe_from_gguf(bpe, bpe_fixture):
    assert bpe.kind == "bpe" and bpe.pre_tokenizer == "llama-bpe"
    spec = bpe_fixture["variants"]["llama-bpe"]
    _check_facts(bpe, spec["facts"])
    text = bpe_fixture["texts"]["english"]
    assert bpe.encode(text) == spec["cases"][0]["ids"]["10"]
    assert bpe.eog_ids >= {
        bpe.token_id(t) for t in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end_of_text|>")
    }


def test_bpe_pieces_are_raw_bytes(bpe):
    ids = bpe.encode("é", add_bos=False)
    assert b"".join(bpe.token_to_piece(i) for i in ids) == "é".encode()
    assert bpe.token_to_piece(bpe.token_id("Ġ")) == b" "
    assert bpe.token_to_piece(bpe.token_id("<think>"), special=False) == b"<think>"  # user-defined
    assert bpe.token_to_piece(bpe.token_id("<|im_end|>"), special=False) == b""  # control


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_bpe_stream_never_splits_a_character(bpe, text):
    _check_stream(bpe, text)


def _check_stream(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_bos=False)
    stream = StreamDecoder(tok)
    shown = ""
    for i in ids:
        delta = stream.push(i)
        shown += delta
        assert "\ufffd" not in delta or "\ufffd" in text
        assert text.startswith(shown), (shown, text)
    shown += stream.flush()
    assert shown == text


def test_stream_holds_back_incomplete_characters(bpe):
    stream = StreamDecoder(bpe)
    pieces = [bpe.token_id(c) for c in ("ð", "Ł", "¦", "Ļ")]  # the bytes of 🦙 in GPT-2's alphabet
    assert [stream.push(i) for i in pieces] == ["", "", "", "🦙"]
    assert stream.push(pieces[0]) == "" and stream.flush() == "\ufffd"


# --- errors ------------------------------------------------------------------------------------


def test_unknown_pre_tokenizer_is_a_model_error(bpe_metadata):
    with pytest.raises(ModelError, match="no-such-pre"):
        _variant(bpe_metadata, "no-such-pre", "x")
    with pytest.raises(ModelError, match="superbpe"):
        _variant(bpe_metadata, "superbpe", "x")


def test_unsupported_tokenizer_model_is_a_model_error(bpe_metadata):
    with pytest.raises(ModelError, match="'bert'"):
        Tokenizer.from_metadata({**bpe_metadata, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ModelError, match=r"tokenizer\.ggml\.model"):
        Tokenizer.from_metadata({"general.architecture": "llama"})
    with pytest.raises(ModelError, match="merges"):
        Tokenizer.from_metadata({k: v for k, v in bpe_metadata.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(ModelError, match="duplicate"):
        tokens = list(bpe_metadata["tokenizer.ggml.tokens"])
        tokens[-1] = tokens[0]
        Tokenizer.from_metadata({**bpe_metadata, "tokenizer.ggml.tokens": tokens})
