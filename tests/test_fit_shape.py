"""engine.fit.shape: KV-cache sizes by hand, sliding windows, GGUF headers (full and partial)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine.errors import ModelError
from engine.fit import describe_gguf, load_catalog, split_params, swa_layers_for
from engine.gguf import open_gguf

GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_llama_31_8b_kv_cache_by_hand(catalog):
    shape = catalog.find("llama-3.1-8b")[0].shape()
    # 32 layers × 8 KV heads × (128 + 128) × 2 bytes × 8192 tokens = 1 GiB
    assert shape.kv_bytes(8192, "f16") == 32 * 8 * (128 + 128) * 2 * 8192 == GIB
    assert shape.kv_bytes(8192, "q8_0") == 32 * 8 * 256 * 8192 * 34 // 32
    assert shape.kv_bytes(8192, "q4_0") == 32 * 8 * 256 * 8192 * 18 // 32
    with pytest.raises(ModelError, match="KV cache type"):
        shape.kv_bytes(8192, "q3_k")


def test_swa_patterns_follow_llama_cpp():
    # set_swa_pattern(n): layer il slides when il % n < n - 1
    assert swa_layers_for(4, 2) == (True, False, True, False)  # Gemma 2: alternating
    g3 = swa_layers_for(12, 6)  # Gemma 3: 5 sliding, then 1 global
    assert [il for il, s in enumerate(g3) if not s] == [5, 11]
    assert swa_layers_for(3, None) == (False, False, False)


def test_gemma3_sliding_window_kv_vs_full_attention_at_32k(catalog):
    gemma = catalog.find("gemma-3-12b")[0].shape()
    assert gemma.n_swa_layers == 40  # 48 layers, every 6th (5, 11, ..., 47) is global
    # global: 8 layers × 8 heads × (256 + 256) × 2 B × 32768 = 2 GiB
    # sliding: 40 layers × 8 × 512 × 2 B × min(32768, 1024 + 512) = 480 MiB
    assert gemma.kv_bytes(32768) == 2 * GIB + 480 * MIB
    # the same model with full attention everywhere: 48 × 8 × 512 × 2 × 32768 = 12 GiB
    full = 48 * 8 * 512 * 2 * 32768
    assert full == 12 * GIB and gemma.kv_bytes(32768) < full / 4
    # a non-sliding model: Llama 3.1 8B at 32k = 4 GiB, all layers at full context
    llama = catalog.find("llama-3.1-8b")[0].shape()
    assert llama.n_swa_layers == 0 and llama.kv_bytes(32768) == 4 * GIB
    # short context: sliding layers never exceed n_ctx
    assert gemma.kv_cells(0, 700) == 700 and gemma.kv_cells(5, 700) == 700


def test_default_model_header(default_model):
    with open_gguf(default_model) as model:
        shape, weights = describe_gguf(model)
    assert (shape.architecture, shape.n_layer, shape.n_embd, shape.n_vocab) == ("gemma3", 18, 640, 262144)
    assert shape.head_dim_k == shape.head_dim_v == 256 and shape.n_head_kv == (1,) * 18
    assert shape.sliding_window == 512 and shape.n_swa_layers == 15 and shape.tied_embeddings
    assert weights.file_bytes == 253_113_024 and weights.tied
    assert weights.token_embd_bytes == weights.output_bytes == 178_257_920  # Q8_0 262144 × 640
    assert weights.layer_bytes == 68_327_424 and weights.other_bytes == 2560  # output_norm f32
    assert weights.weight_bytes == 246_587_904 == 178_257_920 + 68_327_424 + 2560
    assert weights.name == "Q4_K_M" and not weights.estimated
    # KV at 4096: 3 global layers × 1 × 512 × 2 × 4096 + 15 sliding × 1 × 512 × 2 × (512 + 512)
    assert shape.kv_bytes(4096) == 3 * 512 * 2 * 4096 + 15 * 512 * 2 * 1024 == 27 * MIB


def _t(name: str, nbytes: int, n: int | None = None):
    return SimpleNamespace(name=name, nbytes=nbytes, n_elements=n if n is not None else nbytes)


class _Header:
    """A header-only stand-in (what a Hub client could hand over): get(), tensors, file_size."""

    def __init__(self, meta: dict, tensors: list, file_size: int) -> None:
        self._meta, self.tensors, self.file_size = meta, tensors, file_size

    def get(self, key, default=None):
        return self._meta.get(key, default)


def test_partial_moe_header_with_per_layer_kv_heads():
    meta = {
        "general.architecture": "qwen3moe",
        "general.name": "toy moe",
        "qwen3moe.block_count": 4,
        "qwen3moe.embedding_length": 64,
        "qwen3moe.attention.head_count": 4,
        "qwen3moe.attention.head_count_kv": np.array([2, 2, 1, 1], dtype=np.int32),
        "qwen3moe.attention.key_length": 16,
        "qwen3moe.attention.value_length": 16,
        "qwen3moe.expert_count": 8,
        "qwen3moe.expert_used_count": 2,
        "qwen3moe.context_length": 1024,
    }
    tensors = [_t("token_embd.weight", 1000), _t("output.weight", 1200), _t("output_norm.weight", 10)]
    for il in (0, 1):  # a partial header: only the first shard's two layers
        tensors += [
            _t(f"blk.{il}.attn_q.weight", 100),
            _t(f"blk.{il}.ffn_gate_inp.weight", 20),
            _t(f"blk.{il}.ffn_up_exps.weight", 800),
            _t(f"blk.{il}.ffn_down_exps.weight", 800),
        ]
    shape, weights = describe_gguf(_Header(meta, tensors, 9999))
    assert shape.n_head_kv == (2, 2, 1, 1) and shape.is_moe and shape.expert_fraction == 0.25
    assert shape.kv_bytes(100) == (2 + 2 + 1 + 1) * 32 * 100 * 2
    assert [lb.dense for lb in weights.layers] == [120] * 4
    assert [lb.experts for lb in weights.layers] == [1600] * 4
    assert weights.estimated and "2 of 4 layers" in weights.notes[0]
    assert (weights.token_embd_bytes, weights.output_bytes, weights.other_bytes) == (1000, 1200, 10)
    assert not weights.tied and weights.file_bytes == 9999


def test_phi3_window_is_disabled_like_llama_cpp():
    meta = {
        "general.architecture": "phi3",
        "phi3.block_count": 2,
        "phi3.embedding_length": 32,
        "phi3.attention.head_count": 4,
        "phi3.attention.sliding_window": 2047,
    }
    tensors = [_t("blk.0.attn_q.weight", 5), _t("blk.1.attn_q.weight", 5)]
    shape, _ = describe_gguf(_Header(meta, tensors, 10))
    assert shape.sliding_window is None and shape.n_swa_layers == 0
    with pytest.raises(ModelError, match="block_count"):
        describe_gguf(_Header({"general.architecture": "llama"}, tensors, 10))


def test_moe_params_split_from_totals(catalog):
    r1 = catalog.find("unsloth/DeepSeek-R1-GGUF")[0]
    split = split_params(r1.shape(), 3)
    experts = sum(split.layer_experts)
    # P_e = (671B - 37B) / (1 - 8/256) = 654.45B; by architecture 58 × 256 × 3 × 7168 × 2048 = 653.9B
    assert experts == round(634e9 / (1 - 8 / 256))
    assert abs(experts - 58 * 256 * 3 * 7168 * 2048) / experts < 0.002
    assert split.layer_experts[:3] == (0, 0, 0) and all(split.layer_experts[3:])
    assert split.total == 671_000_000_000


def test_parsed_headers_as_fetched_from_the_hub(default_model):
    from engine.gguf import parse_header

    with open(default_model, "rb") as fh:
        data = fh.read()
    header = parse_header(data, "remote")  # what engine.hub's fetch_remote_header returns
    with open_gguf(default_model) as model:
        expected = describe_gguf(model)
    assert describe_gguf(header) == expected
    assert describe_gguf([header]) == expected
    with pytest.raises(ModelError, match="no GGUF header"):
        describe_gguf([])
