"""Tiny random models in real llama / gemma3 GGUF layouts, made deterministically from a seed.

Used by the conversion tests, the llama.cpp fixture script and the conversion benchmark: the same
spec and seed always give the same bytes, so the models need not be stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.gguf import MetadataValue, TensorSpec, write_gguf_sync


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    arch: str = "llama"  # "llama" or "gemma3"
    n_layer: int = 8
    n_embd: int = 256
    n_ff: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    vocab: int = 256
    dtype: str = "F32"  # of 2-D weights: F32, F16 or BF16 (norms stay F32)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _metadata(s: SyntheticSpec) -> dict[str, MetadataValue]:
    a = s.arch
    u32 = lambda v: MetadataValue(V.UINT32, int(v))  # noqa: E731
    meta = {
        "general.architecture": MetadataValue(V.STRING, a),
        "general.type": MetadataValue(V.STRING, "model"),
        "general.name": MetadataValue(V.STRING, f"synthetic {a} {s.n_layer}x{s.n_embd}"),
        f"{a}.context_length": u32(512),
        f"{a}.embedding_length": u32(s.n_embd),
        f"{a}.block_count": u32(s.n_layer),
        f"{a}.feed_forward_length": u32(s.n_ff),
        f"{a}.attention.head_count": u32(s.n_head),
        f"{a}.attention.head_count_kv": u32(s.n_head_kv),
        f"{a}.attention.layer_norm_rms_epsilon": MetadataValue(V.FLOAT32, 1e-6),
        f"{a}.rope.freq_base": MetadataValue(V.FLOAT32, 10000.0),
    }
    if a == "gemma3":
        meta[f"{a}.attention.key_length"] = u32(s.head_dim)
        meta[f"{a}.attention.value_length"] = u32(s.head_dim)
        meta[f"{a}.attention.sliding_window"] = u32(128)
    else:
        meta[f"{a}.rope.dimension_count"] = u32(s.head_dim)
        meta[f"{a}.vocab_size"] = u32(s.vocab)
    ftype = {"F32": 0, "F16": 1, "BF16": 32}[s.dtype]
    meta["general.file_type"] = u32(ftype)
    meta["tokenizer.ggml.model"] = MetadataValue(V.STRING, "gpt2")
    meta["tokenizer.ggml.pre"] = MetadataValue(V.STRING, "default")
    tokens = [f"t{i}" for i in range(s.vocab)]
    meta["tokenizer.ggml.tokens"] = MetadataValue(V.ARRAY, tokens, V.STRING)
    meta["tokenizer.ggml.token_type"] = MetadataValue(V.ARRAY, np.ones(s.vocab, np.int32), V.INT32)
    meta["tokenizer.ggml.merges"] = MetadataValue(V.ARRAY, ["t 1"], V.STRING)
    meta["tokenizer.ggml.bos_token_id"] = u32(1)
    meta["tokenizer.ggml.eos_token_id"] = u32(2)
    return meta


def tensor_shapes(s: SyntheticSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, NumPy shape) in the order the file stores them (not llama.cpp's order)."""
    e, f, hd = s.n_embd, s.n_ff, s.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (s.vocab, e))]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (e,)),
            (b + "attn_q.weight", (s.n_head * hd, e)),
            (b + "attn_k.weight", (s.n_head_kv * hd, e)),
            (b + "attn_v.weight", (s.n_head_kv * hd, e)),
            (b + "attn_output.weight", (e, s.n_head * hd)),
        ]
        if s.arch == "gemma3":
            out += [
                (b + "attn_q_norm.weight", (hd,)),
                (b + "attn_k_norm.weight", (hd,)),
                (b + "post_attention_norm.weight", (e,)),
            ]
        out += [
            (b + "ffn_norm.weight", (e,)),
            (b + "ffn_gate.weight", (f, e)),
            (b + "ffn_up.weight", (f, e)),
            (b + "ffn_down.weight", (e, f)),
        ]
        if s.arch == "gemma3":
            out.append((b + "post_ffw_norm.weight", (e,)))
    out.append(("output_norm.weight", (e,)))
    if s.arch != "gemma3":  # gemma3 ties its output to token_embd
        out.append(("output.weight", (s.vocab, e)))
    return out


def tensor_data(s: SyntheticSpec, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor's values (deterministic per spec, seed and name)."""
    key = [s.seed, *name.encode()]
    rng = np.random.default_rng(key)
    if len(shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(0.05)
    # a few outliers per row, as real weights have
    idx = rng.integers(0, shape[-1], size=(shape[0], 2))
    x[np.arange(shape[0])[:, None], idx] *= np.float32(8.0)
    return x


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32" or x.ndim == 1:
        return x
    if dtype == "F16":
        return x.astype(np.float16)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even, as ggml does
    return rounded.astype(np.uint16)


def write_synthetic(path: str | Path, spec: SyntheticSpec) -> Path:
    """Write the synthetic model to ``path``; returns the path."""
    shapes = tensor_shapes(spec)
    wtype = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16}[spec.dtype]
    specs = [TensorSpec.from_shape(n, shp, T.F32 if len(shp) == 1 else wtype) for n, shp in shapes]
    shape_of = dict(shapes)

    def data(t: TensorSpec) -> np.ndarray:
        return _encode(tensor_data(spec, t.name, shape_of[t.name]), spec.dtype)

    return write_gguf_sync(path, _metadata(spec), specs, data)[0]


# The models the llama.cpp fixtures are made from (tests/fixtures/convert).
FIXTURE_MODELS: dict[str, SyntheticSpec] = {
    # 8 layers: use_more_bits picks layers 0, 3, 6, 7; n_gqa 2; untied output; all rows % 256 == 0
    "llama-f32": SyntheticSpec("llama", 8, 256, 256, 4, 2, 64, 256, "F32", 1),
    # n_gqa 4 (attn_v rules), F16 source
    "llama-gqa4-f16": SyntheticSpec("llama", 4, 256, 512, 8, 2, 32, 256, "F16", 2),
    # 640 wide like Gemma 3 270M (Q4_K -> Q5_0 ... fallbacks), tied embeddings, n_ff 224 % 32 == 0 but
    # % 256 != 0, head_dim 64; F16 source
    "gemma3-640-f16": SyntheticSpec("gemma3", 4, 640, 224, 4, 1, 64, 256, "F16", 3),
    # rows of 80 (not a multiple of 32): the F16 fallback; BF16 source
    "gemma3-80-bf16": SyntheticSpec("gemma3", 2, 80, 96, 2, 1, 40, 128, "BF16", 4),
}


def synthetic_imatrix(spec: SyntheticSpec):
    """A deterministic importance matrix for the synthetic model (every 2-D weight but token_embd/output)."""
    from engine.convert.imatrix import Imatrix, ImatrixEntry

    im = Imatrix(datasets=["synthetic"], chunk_count=10, chunk_size=512)
    for name, shape in tensor_shapes(spec):
        if len(shape) != 2 or name in ("token_embd.weight", "output.weight"):
            continue
        rng = np.random.default_rng([spec.seed, 7, *name.encode()])
        sums = (rng.gamma(2.0, 1.0, size=(1, shape[1])) * 5120).astype(np.float32)
        im.entries[name] = ImatrixEntry(sums, np.array([5120.0], np.float32))
    return im
