"""Hugging Face folder import: name mapping, llama q/k permutation, gemma norm +1, tokenizers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.convert import convert_sync, plan_conversion
from engine.convert.hf import HFSource, permute_rows
from engine.errors import ModelError
from engine.gguf import open_gguf


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32") -> None:
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        if dtype == "BF16":
            raw = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        elif dtype == "F16":
            raw = a.astype(np.float16).tobytes()
        else:
            raw = a.astype(np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _layers(rng, n_layer, e, f, nh, nkv, hd, gemma=False):
    t = {}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = rng.standard_normal((nh * hd, e))
        t[p + "self_attn.k_proj.weight"] = rng.standard_normal((nkv * hd, e))
        t[p + "self_attn.v_proj.weight"] = rng.standard_normal((nkv * hd, e))
        t[p + "self_attn.o_proj.weight"] = rng.standard_normal((e, nh * hd))
        t[p + "mlp.gate_proj.weight"] = rng.standard_normal((f, e))
        t[p + "mlp.up_proj.weight"] = rng.standard_normal((f, e))
        t[p + "mlp.down_proj.weight"] = rng.standard_normal((e, f))
        t[p + "input_layernorm.weight"] = rng.standard_normal(e)
        t[p + "post_attention_layernorm.weight"] = rng.standard_normal(e)
        if gemma:
            t[p + "pre_feedforward_layernorm.weight"] = rng.standard_normal(e)
            t[p + "post_feedforward_layernorm.weight"] = rng.standard_normal(e)
            t[p + "self_attn.q_norm.weight"] = rng.standard_normal(hd)
            t[p + "self_attn.k_norm.weight"] = rng.standard_normal(hd)
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture
def llama_folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "tiny-llama"
    d.mkdir()
    cfg = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 256,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    }  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    t = _layers(rng, 2, 64, 128, 4, 2, 16)
    t["model.embed_tokens.weight"] = rng.standard_normal((8, 64)).astype(np.float32)
    t["model.norm.weight"] = rng.standard_normal(64).astype(np.float32)
    t["lm_head.weight"] = rng.standard_normal((8, 64)).astype(np.float32)
    names = sorted(t)
    write_safetensors(d / "model-00001-of-00002.safetensors", {k: t[k] for k in names[:10]}, "BF16")
    write_safetensors(d / "model-00002-of-00002.safetensors", {k: t[k] for k in names[10:]}, "BF16")
    wm = {k: "model-00001-of-00002.safetensors" for k in names[:10]}
    wm.update({k: "model-00002-of-00002.safetensors" for k in names[10:]})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "Ġa": 4}
    tj = {
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", ["Ġ", "a"]]},
        "added_tokens": [{"id": 6, "content": "<|begin_of_text|>", "special": True},
                         {"id": 7, "content": "<|eot_id|>", "special": True}],
    }  # fmt: skip
    (d / "tokenizer.json").write_text(json.dumps(tj))
    tc = {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>"}, "chat_template": "{{x}}"}
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    return d, t


def _bf16(a):
    return ((a.astype(np.float32).view(np.uint32) >> 16) << 16).view(np.float32)


def test_llama_import(llama_folder, tmp_path):
    d, t = llama_folder
    out = convert_sync(d, tmp_path / "o.gguf", "F16").path
    with open_gguf(out) as m:
        assert m.get("general.architecture") == "llama"
        assert m.get("llama.rope.dimension_count") == 16 and m.get("llama.attention.head_count_kv") == 2
        assert m.get("tokenizer.ggml.model") == "gpt2" and m.get("tokenizer.ggml.pre") == "llama-bpe"
        toks = ["a", "b", "c", "ab", "Ġa", "[PAD5]", "<|begin_of_text|>", "<|eot_id|>"]
        assert list(m.get("tokenizer.ggml.tokens")) == toks
        assert list(m.get("tokenizer.ggml.token_type")) == [1, 1, 1, 1, 1, 5, 3, 3]
        assert list(m.get("tokenizer.ggml.merges")) == ["a b", "Ġ a"]
        assert m.get("tokenizer.ggml.bos_token_id") == 6 and m.get("tokenizer.ggml.eos_token_id") == 7
        assert m.get("tokenizer.chat_template") == "{{x}}"
        assert m.tensor("blk.1.attn_q.weight").type_name == "F16"
        assert m.tensor("blk.1.attn_norm.weight").type_name == "F32"
        assert m.has_tensor("output.weight") and m.has_tensor("rope_freqs.weight")
        rf = m.array("rope_freqs.weight")
        assert rf.shape == (8,) and rf[0] == 1.0 and rf[-1] == 8.0
        q = _bf16(t["model.layers.1.self_attn.q_proj.weight"])
        k = _bf16(t["model.layers.1.self_attn.k_proj.weight"])
        # convert_hf_to_gguf's permute, written out
        q_ref = q.reshape(4, 2, 16 // 2, 64).swapaxes(1, 2).reshape(q.shape)
        k_ref = k.reshape(2, 2, 16 // 2, 64).swapaxes(1, 2).reshape(k.shape)
        assert np.array_equal(m.array("blk.1.attn_q.weight"), q_ref.astype(np.float16))
        assert np.array_equal(m.array("blk.1.attn_k.weight"), k_ref.astype(np.float16))
        v = _bf16(t["model.layers.1.self_attn.v_proj.weight"])
        assert np.array_equal(m.array("blk.1.attn_v.weight"), v.astype(np.float16))
        assert np.array_equal(m.array("output_norm.weight"), _bf16(t["model.norm.weight"]))


def test_llama_import_quantized_plan(llama_folder):
    d, _ = llama_folder
    plan = plan_conversion(d, "Q8_0")
    types = {p.name: (p.src_type, p.dst_type) for p in plan.tensors}
    assert types["blk.0.ffn_up.weight"] == ("BF16", "Q8_0")
    assert types["token_embd.weight"] == ("BF16", "Q8_0") and types["output.weight"] == ("BF16", "Q8_0")
    assert plan.tensors[0].name == "output.weight"  # llama.cpp's order: non-block tensors by name first


def _spm_model(pieces, add_dummy_prefix=False) -> bytes:
    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def ld(field, payload):
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    buf = b""
    for text, score, typ in pieces:
        sp = (
            ld(1, text.encode())
            + varint(2 << 3 | 5)
            + struct.pack("<f", score)
            + varint(3 << 3)
            + varint(typ)
        )
        buf += ld(1, sp)
    buf += ld(3, varint(3 << 3) + varint(int(add_dummy_prefix)))
    return buf


def test_gemma3_import(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "tiny-gemma"
    d.mkdir()
    cfg = {
        "architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "vocab_size": 6, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 512,
        "max_position_embeddings": 32768,
    }  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    t = _layers(rng, 2, 64, 96, 2, 1, 32, gemma=True)
    t["model.embed_tokens.weight"] = rng.standard_normal((6, 64)).astype(np.float32)
    t["model.norm.weight"] = rng.standard_normal(64).astype(np.float32)
    write_safetensors(d / "model.safetensors", t, "F32")
    pieces = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2), ("▁a", -1.5, 1)]
    (d / "tokenizer.model").write_bytes(_spm_model(pieces))
    tc = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
          "added_tokens_decoder": {"5": {"content": "<start_of_turn>", "special": True}}}  # fmt: skip
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    out = convert_sync(d, tmp_path / "g.gguf", "F32").path
    with open_gguf(out) as m:
        assert m.get("general.architecture") == "gemma3"
        assert m.get("gemma3.attention.key_length") == 32 and m.get("gemma3.attention.sliding_window") == 512
        assert not m.has_tensor("output.weight")  # tied
        assert m.get("tokenizer.ggml.model") == "llama" and m.get("tokenizer.ggml.add_space_prefix") is False
        assert list(m.get("tokenizer.ggml.tokens")) == [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "▁a",
            "<start_of_turn>",
        ]
        assert list(m.get("tokenizer.ggml.token_type")) == [3, 3, 3, 2, 1, 3]
        assert m.get("tokenizer.ggml.scores")[4] == np.float32(-1.5)
        assert m.get("tokenizer.ggml.bos_token_id") == 2 and m.get("tokenizer.ggml.add_bos_token") is True
        for hf, gg in [
            ("model.layers.1.input_layernorm.weight", "blk.1.attn_norm.weight"),
            ("model.layers.1.pre_feedforward_layernorm.weight", "blk.1.ffn_norm.weight"),
            ("model.layers.1.post_feedforward_layernorm.weight", "blk.1.post_ffw_norm.weight"),
            ("model.layers.1.self_attn.q_norm.weight", "blk.1.attn_q_norm.weight"),
            ("model.norm.weight", "output_norm.weight"),
        ]:
            assert np.array_equal(m.array(gg), t[hf] + np.float32(1.0)), gg
        # no permutation for gemma
        assert np.array_equal(m.array("blk.0.attn_q.weight"), t["model.layers.0.self_attn.q_proj.weight"])


def test_permute_rows_is_a_permutation():
    p = permute_rows(32, 4)
    assert sorted(p.tolist()) == list(range(32)) and p[:4].tolist() == [0, 4, 1, 5]


def test_bad_folders(tmp_path):
    with pytest.raises(ModelError):
        HFSource(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ModelError, match="not supported"):
        HFSource(tmp_path)
