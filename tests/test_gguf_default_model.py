"""The real default model, read by our parser and by llama.cpp's gguf-py: they must agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import GGUFValueType as V

from engine.cli import run_cli
from engine.gguf import open_gguf, read_model_info


@pytest.fixture(scope="module")
def reference(default_model):
    return GGUFReader(default_model)  # slow (~10-25 s): once per module


def test_metadata_and_tensor_table_match_gguf_py(default_model, reference):
    with open_gguf(default_model) as m:
        assert list(m.metadata) == [k for k in reference.fields if not k.startswith("GGUF.")]
        for key, mv in m.metadata.items():
            field = reference.fields[key]
            assert mv.type == field.types[0], key
            if mv.type == V.ARRAY:
                assert mv.item_type == field.types[1], key
                ours = mv.value
                theirs = field.contents()
                if isinstance(ours, np.ndarray):
                    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=ours.dtype), err_msg=key)
                else:
                    assert ours == theirs, key
            else:
                assert mv.value == pytest.approx(field.contents()), key
        assert len(m.tensors) == len(reference.tensors)
        for ours, theirs in zip(m.tensors, reference.tensors, strict=True):
            assert ours.name == theirs.name
            assert ours.dims == tuple(int(d) for d in theirs.shape)
            assert ours.type == int(theirs.tensor_type)
            assert ours.file_offset == theirs.data_offset
            assert ours.nbytes == theirs.n_bytes
            assert ours.n_elements == theirs.n_elements
        # zero-copy views see the same bytes gguf-py sees
        for name in ("token_embd.weight", "blk.17.ffn_down.weight", "output_norm.weight"):
            t = next(t for t in reference.tensors if t.name == name)
            assert bytes(m.raw(name)) == t.data.tobytes()


def test_info_matches_gguf_py(default_model, reference):
    info = read_model_info(default_model)

    def f(key):
        return reference.fields[key].contents()

    assert info.architecture == f("general.architecture") == "gemma3"
    assert info.name == f("general.name")
    assert info.parameters == sum(int(t.n_elements) for t in reference.tensors)
    assert info.layers == f("gemma3.block_count") == 18
    assert info.context_length == f("gemma3.context_length")
    assert info.embedding_length == f("gemma3.embedding_length") == 640
    assert info.heads == f("gemma3.attention.head_count")
    assert info.kv_heads == f("gemma3.attention.head_count_kv")
    assert info.head_dim_k == f("gemma3.attention.key_length")
    assert info.head_dim_v == f("gemma3.attention.value_length")
    assert info.sliding_window == f("gemma3.attention.sliding_window")
    assert info.vocab_size == len(f("tokenizer.ggml.tokens")) == 262144
    assert info.tokenizer == f("tokenizer.ggml.model") == "llama"
    assert info.chat_template is ("tokenizer.chat_template" in reference.fields)
    assert info.file_type == "Q4_K_M"
    assert info.file_size == default_model.stat().st_size
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reference.tensors)
    assert info.bits_per_weight == pytest.approx(info.tensor_bytes * 8 / info.parameters, abs=1e-4)
    counts = {}
    for t in reference.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    assert info.tensor_types == counts
    assert info.shards == [str(default_model)]


def test_cli_info_json(default_model, capsys):
    assert run_cli(["info", str(default_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["architecture"] == "gemma3"
    assert data["parameters"] == read_model_info(default_model).parameters
    assert data["tensor_types"]["Q4_K"] == 27
    for key in (
        "layers",
        "context_length",
        "embedding_length",
        "heads",
        "kv_heads",
        "head_dim_k",
        "head_dim_v",
        "vocab_size",
        "tokenizer",
        "chat_template",
        "file_size",
        "bits_per_weight",
        "tensor_types",
        "shards",
    ):
        assert key in data


def test_cli_info_default_alias_and_human_output(default_model, capsys):
    assert run_cli(["info", "default"]) == 0
    out = capsys.readouterr().out
    assert "gemma3" in out and "Q4_K_M" in out and "262,144" in out


def test_cli_info_bad_file_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(10))
    assert run_cli(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kvant: error: ") and "bad.gguf" in err and "Traceback" not in err
    assert run_cli(["info", str(bad), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "GGUFError"
