"""Small, fully-featured GGUF files built with our writer, for tests and fuzzing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.gguf import MetadataValue, TensorSpec, write_gguf_sync


def sample_metadata() -> dict[str, MetadataValue]:
    return {
        "general.architecture": MetadataValue(V.STRING, "llama"),
        "general.name": MetadataValue(V.STRING, "tiny ünïcode ✓"),
        "llama.block_count": MetadataValue(V.UINT32, 2),
        "llama.context_length": MetadataValue(V.UINT32, 128),
        "llama.embedding_length": MetadataValue(V.UINT32, 64),
        "llama.attention.head_count": MetadataValue(V.UINT32, 4),
        "llama.attention.head_count_kv": MetadataValue(V.INT32, 2),
        "llama.rope.freq_base": MetadataValue(V.FLOAT32, 10000.0),
        "some.u8": MetadataValue(V.UINT8, 255),
        "some.i8": MetadataValue(V.INT8, -128),
        "some.u16": MetadataValue(V.UINT16, 65535),
        "some.i16": MetadataValue(V.INT16, -32768),
        "some.u64": MetadataValue(V.UINT64, 2**64 - 1),
        "some.i64": MetadataValue(V.INT64, -(2**63)),
        "some.f64": MetadataValue(V.FLOAT64, 3.141592653589793),
        "some.bool": MetadataValue(V.BOOL, True),
        "tokenizer.ggml.model": MetadataValue(V.STRING, "gpt2"),
        "tokenizer.ggml.tokens": MetadataValue(V.ARRAY, ["a", "b", "Ġc", "", "<0x0A>"], V.STRING),
        "tokenizer.ggml.scores": MetadataValue(V.ARRAY, np.arange(5, dtype=np.float32), V.FLOAT32),
        "tokenizer.ggml.token_type": MetadataValue(V.ARRAY, np.array([1, 1, 1, 3, 6], np.int32), V.INT32),
        "nested": MetadataValue(
            V.ARRAY,
            [
                MetadataValue(V.ARRAY, np.array([1, 2], np.uint16), V.UINT16),
                MetadataValue(V.ARRAY, np.array([3], np.uint16), V.UINT16),
            ],
            V.ARRAY,
        ),
        "tokenizer.chat_template": MetadataValue(V.STRING, "{{ messages }}"),
    }


def sample_tensors() -> list[tuple[TensorSpec, np.ndarray]]:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((4, 64)).astype(np.float32)
    f16 = rng.standard_normal(64).astype(np.float16)
    q8 = rng.integers(0, 256, size=2 * 2 * 34, dtype=np.uint8)  # 2 rows × 64 cols of Q8_0
    return [
        (TensorSpec.from_shape("token_embd.weight", (4, 64), T.F32), f32),
        (TensorSpec.from_shape("blk.0.attn_norm.weight", (64,), T.F16), f16),
        (TensorSpec.from_shape("blk.0.ffn_up.weight", (2, 64), T.Q8_0), q8),
    ]


def write_sample(path: Path, **kwargs) -> Path:
    tensors = sample_tensors()
    data = {spec.name: arr for spec, arr in tensors}
    return write_gguf_sync(
        path, sample_metadata(), [s for s, _ in tensors], lambda s: data[s.name], **kwargs
    )[0]
