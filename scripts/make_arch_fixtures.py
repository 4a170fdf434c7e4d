"""Make the llama.cpp oracle fixtures for the llama, qwen2, qwen3 and phi3 forward passes
(tests/fixtures/arch/<arch>.npz).

For each architecture, :func:`build` writes a tiny random-weight GGUF (seeded, so the same bytes
every time) with Kvant's own writer and quantizer, in the layout llama.cpp expects: 256 wide,
3 layers, GQA, n_ff 512, a 512-token byte-level BPE vocabulary, weights in a mix of
Q8_0 / Q6_K / Q5_K / Q5_0 / Q4_K / Q4_0, norms, biases and rope factors in F32.  Then llama.cpp
(llama-cpp-python, 2 threads, n_ctx 128, f16 KV cache: its defaults) evaluates a fixed 64-token
sequence with every position's logits, and 16 greedy tokens after an 8-token prompt (one token at
a time).  Stored: ``tokens``, ``logits`` (64, 512) f32, ``prompt``, ``greedy``, ``gguf_sha256``,
``decode_logits`` (the first 24 positions evaluated one token at a time, ``n_batch=1``),
``llama_cpp_version``; for phi3 also ``logits_long_ctx``, the same sequence with n_ctx 8192 (beyond
the original context, so llama.cpp uses the long rope factors).  ``phi3-hf``: a tiny Hugging Face
phi3 folder converted by Kvant's importer (Q8_0), the same measurements.  The test
(tests/test_models_arch.py) rebuilds the GGUF with the same code, checks the hash, and compares
Kvant's logits.

Run:  python scripts/make_arch_fixtures.py [ARCH ...]   (needs llama-cpp-python, the oracle; a dev
dependency of this script only)
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFValueType as V  # noqa: E402

from engine.gguf import MetadataValue, TensorSpec, write_gguf_sync  # noqa: E402
from engine.quant import quantize  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "arch"
N_CTX = 128
N_TOKENS = 64
N_PROMPT = 8
N_GREEDY = 16
THREADS = 2
LONG_N_CTX = 8192  # phi3: > original context 4096

MT = gguf.MODEL_TENSOR
K = gguf.Keys


@dataclass(frozen=True)
class ArchSpec:
    arch: str
    seed: int
    n_layer: int = 3
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    vocab: int = 512
    rope_base: float = 10000.0
    tied: bool = False
    spm: bool = False  # SentencePiece vocabulary (else byte-level BPE)
    extra_keys: dict = field(default_factory=dict)


SPECS: dict[str, ArchSpec] = {
    # Llama 3 style: rope base 500000 and a rope_freqs tensor (per-pair divisors 1..8), untied output
    "llama": ArchSpec("llama", 11, rope_base=500000.0, spm=True),
    # Qwen 2.5 style: q/k/v biases, GQA 4, tied output, rope base 1e6
    "qwen2": ArchSpec("qwen2", 12, n_head_kv=1, rope_base=1000000.0, tied=True),
    # Qwen 3 style: head_dim 128 != n_embd / n_head (q is 512 wide), q/k norms, scale 1/sqrt(128)
    "qwen3": ArchSpec("qwen3", 13, head_dim=128, rope_base=1000000.0),
    # Phi 3.5 style: fused qkv and gate-up, short/long rope factors with an attention factor, and a
    # sliding_window key that llama.cpp ignores for phi3 (16, well inside the 64 tokens)
    "phi3": ArchSpec(
        "phi3",
        14,
        spm=True,
        extra_keys={
            K.Rope.SCALING_ATTN_FACTOR: 1.1902380714238083,
            K.Rope.SCALING_ORIG_CTX_LEN: 4096,
            K.Attention.SLIDING_WINDOW: 16,
        },
    ),
}

# weight types by tensor kind, rotated across layers so every layer mixes several types
TYPE_CYCLE = {
    MT.ATTN_Q: (T.Q4_K, T.Q5_0, T.Q8_0),
    MT.ATTN_K: (T.Q4_0, T.Q6_K, T.Q5_K),
    MT.ATTN_V: (T.Q6_K, T.Q8_0, T.Q4_K),
    MT.ATTN_QKV: (T.Q4_K, T.Q5_0, T.Q6_K),
    MT.ATTN_OUT: (T.Q5_0, T.Q4_K, T.Q8_0),
    MT.FFN_GATE: (T.Q4_K, T.Q4_0, T.Q5_K),
    MT.FFN_UP: (T.Q5_K, T.Q4_K, T.Q4_0),
    MT.FFN_DOWN: (T.Q6_K, T.Q5_0, T.Q4_K),
}
# standard deviations of the random weights (picked so attention is neither flat nor one-hot and
# the logits spread like a real model's: std ~2-3)
STD = {MT.ATTN_Q: 0.08, MT.ATTN_K: 0.08, MT.ATTN_QKV: 0.08, MT.TOKEN_EMBD: 0.5, MT.OUTPUT: 0.15}
STD_DEFAULT = 0.05


def _name(t: gguf.MODEL_TENSOR, il: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[t]
    return f"{base.format(bid=il) if il is not None else base}.{suffix}"


def tensors(s: ArchSpec) -> list[tuple[str, tuple[int, ...], int, float | str]]:
    """(name, NumPy shape, GGML type, std or a special kind) in file order."""
    e, f, hd = s.n_embd, s.n_ff, s.head_dim
    nq, nkv = s.n_head * hd, s.n_head_kv * hd
    # a tied embedding is the output too: scale it like an output matrix
    emb_std = STD[MT.OUTPUT] if s.tied else STD[MT.TOKEN_EMBD]
    out: list = [(_name(MT.TOKEN_EMBD), (s.vocab, e), T.Q8_0, emb_std)]
    if s.arch == "llama":
        out.append((_name(MT.ROPE_FREQS), (hd // 2,), T.F32, "rope_freqs"))
    if s.arch == "phi3":
        out.append((_name(MT.ROPE_FACTORS_LONG), (hd // 2,), T.F32, "rope_long"))
        out.append((_name(MT.ROPE_FACTORS_SHORT), (hd // 2,), T.F32, "rope_short"))
    for il in range(s.n_layer):

        def w(t, shape, il=il):
            return (_name(t, il), shape, TYPE_CYCLE[t][il % 3], STD.get(t, STD_DEFAULT))

        out.append((_name(MT.ATTN_NORM, il), (e,), T.F32, "norm"))
        if s.arch == "phi3":
            out.append(w(MT.ATTN_QKV, (nq + 2 * nkv, e)))
        else:
            out += [w(MT.ATTN_Q, (nq, e)), w(MT.ATTN_K, (nkv, e)), w(MT.ATTN_V, (nkv, e))]
        if s.arch == "qwen2":
            out += [
                (_name(MT.ATTN_Q, il, "bias"), (nq,), T.F32, "bias"),
                (_name(MT.ATTN_K, il, "bias"), (nkv,), T.F32, "bias"),
                (_name(MT.ATTN_V, il, "bias"), (nkv,), T.F32, "bias"),
            ]
        if s.arch == "qwen3":
            out += [
                (_name(MT.ATTN_Q_NORM, il), (hd,), T.F32, "norm"),
                (_name(MT.ATTN_K_NORM, il), (hd,), T.F32, "norm"),
            ]
        out.append(w(MT.ATTN_OUT, (e, nq)))
        out.append((_name(MT.FFN_NORM, il), (e,), T.F32, "norm"))
        if s.arch == "phi3":
            out.append(w(MT.FFN_UP, (2 * f, e)))
        else:
            out += [w(MT.FFN_GATE, (f, e)), w(MT.FFN_UP, (f, e))]
        out.append(w(MT.FFN_DOWN, (e, f)))
    out.append((_name(MT.OUTPUT_NORM), (e,), T.F32, "norm"))
    if not s.tied:
        out.append((_name(MT.OUTPUT), (s.vocab, e), T.Q6_K, STD[MT.OUTPUT]))
    return out


def values(s: ArchSpec, name: str, shape: tuple[int, ...], kind: float | str) -> np.ndarray:
    """The tensor's f32 values: deterministic per seed and name."""
    rng = np.random.default_rng([s.seed, *name.encode()])
    if kind == "norm":
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "bias":
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "rope_freqs":  # Llama 3.1's shape: 1 for high frequencies, up to 8 for low ones
        return np.geomspace(1.0, 8.0, shape[0]).astype(np.float32)
    if kind == "rope_short":
        return (1.0 + rng.uniform(0.0, 0.5, shape)).astype(np.float32)
    if kind == "rope_long":
        return np.geomspace(1.0, 40.0, shape[0]).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(kind)
    idx = rng.integers(0, shape[-1], size=(shape[0], 2))  # a few outliers per row
    x[np.arange(shape[0])[:, None], idx] *= np.float32(6.0)
    return x


def metadata(s: ArchSpec) -> dict[str, MetadataValue]:
    a = s.arch

    def u32(v):
        return MetadataValue(V.UINT32, int(v))

    def f32(v):
        return MetadataValue(V.FLOAT32, float(v))

    def k(key: str) -> str:
        return key.format(arch=a)

    meta = {
        K.General.ARCHITECTURE: MetadataValue(V.STRING, a),
        K.General.TYPE: MetadataValue(V.STRING, "model"),
        K.General.NAME: MetadataValue(V.STRING, f"kvant tiny random {a}"),
        k(K.LLM.CONTEXT_LENGTH): u32(131072 if a == "phi3" else 4096),
        k(K.LLM.EMBEDDING_LENGTH): u32(s.n_embd),
        k(K.LLM.BLOCK_COUNT): u32(s.n_layer),
        k(K.LLM.FEED_FORWARD_LENGTH): u32(s.n_ff),
        k(K.Attention.HEAD_COUNT): u32(s.n_head),
        k(K.Attention.HEAD_COUNT_KV): u32(s.n_head_kv),
        k(K.Attention.LAYERNORM_RMS_EPS): f32(1e-5 if a in ("llama", "phi3") else 1e-6),
        k(K.Rope.FREQ_BASE): f32(s.rope_base),
        k(K.Rope.DIMENSION_COUNT): u32(s.head_dim),
    }
    if s.head_dim != s.n_embd // s.n_head:
        meta[k(K.Attention.KEY_LENGTH)] = u32(s.head_dim)
        meta[k(K.Attention.VALUE_LENGTH)] = u32(s.head_dim)
    for key, v in s.extra_keys.items():
        meta[k(key)] = u32(v) if isinstance(v, int) else f32(v)
    meta[K.General.FILE_TYPE] = u32(15)  # mostly Q4_K_M
    meta.update(spm_vocab(s.vocab) if s.spm else bpe_vocab(s.vocab))
    return meta


def bpe_vocab(n: int) -> dict[str, MetadataValue]:
    """A byte-level BPE vocabulary (``gpt2``): tokens t0, t1, ..., one merge."""
    return {
        K.Tokenizer.MODEL: MetadataValue(V.STRING, "gpt2"),
        K.Tokenizer.PRE: MetadataValue(V.STRING, "default"),
        K.Tokenizer.LIST: MetadataValue(V.ARRAY, [f"t{i}" for i in range(n)], V.STRING),
        K.Tokenizer.TOKEN_TYPE: MetadataValue(V.ARRAY, np.ones(n, np.int32), V.INT32),
        K.Tokenizer.MERGES: MetadataValue(V.ARRAY, ["t 1"], V.STRING),
        K.Tokenizer.BOS_ID: MetadataValue(V.UINT32, 1),
        K.Tokenizer.EOS_ID: MetadataValue(V.UINT32, 2),
    }


def spm_vocab(n: int) -> dict[str, MetadataValue]:
    """A SentencePiece vocabulary (``llama``): <unk>, <s>, </s>, the 256 byte tokens, pieces, and a
    last control token <|endoftext|> (llama.cpp's vocabulary loader needs it for phi3)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < n:
        piece = letters[i % 26] + (letters[(i // 26) % 26] if i >= 26 else "")
        tokens.append(("\u2581" if i % 2 else "") + piece)
        types.append(1)
        i += 1
    tokens[-1], types[-1] = "<|endoftext|>", 3
    scores = np.zeros(n, np.float32)
    scores[259:] = -np.arange(n - 259, dtype=np.float32)
    return {
        K.Tokenizer.MODEL: MetadataValue(V.STRING, "llama"),
        K.Tokenizer.PRE: MetadataValue(V.STRING, "default"),
        K.Tokenizer.LIST: MetadataValue(V.ARRAY, tokens, V.STRING),
        K.Tokenizer.SCORES: MetadataValue(V.ARRAY, scores, V.FLOAT32),
        K.Tokenizer.TOKEN_TYPE: MetadataValue(V.ARRAY, np.array(types, np.int32), V.INT32),
        K.Tokenizer.BOS_ID: MetadataValue(V.UINT32, 1),
        K.Tokenizer.EOS_ID: MetadataValue(V.UINT32, 2),
        K.Tokenizer.UNK_ID: MetadataValue(V.UINT32, 0),
    }


def build(
    arch: str, path: str | Path, *, drop: tuple[str, ...] = (), meta: dict | None = None
) -> tuple[Path, str]:
    """Write the tiny ``arch`` model to ``path``; returns (path, sha256 of the file).  ``drop``:
    tensor names or metadata keys to leave out, ``meta``: metadata to add or replace (both for
    the tests of broken files)."""
    s = SPECS[arch]
    plan = [t for t in tensors(s) if t[0] not in drop]
    specs = [TensorSpec.from_shape(name, shape, int(t)) for name, shape, t, _ in plan]
    by_name = {name: (shape, t, kind) for name, shape, t, kind in plan}
    md = {k: v for k, v in metadata(s).items() if k not in drop}
    md.update(meta or {})

    def data(spec: TensorSpec) -> np.ndarray:
        shape, t, kind = by_name[spec.name]
        x = values(s, spec.name, shape, kind)
        return x if t == T.F32 else quantize(x, t.name)

    out = write_gguf_sync(path, md, specs, data)[0]
    return out, hashlib.sha256(out.read_bytes()).hexdigest()


# ------------------------------------------------------------------ a Hugging Face phi3 folder

HF_PHI3_SEED = 15
HF_PHI3_VOCAB = 320  # 310 SentencePiece pieces, 4 added tokens, 6 unused ids


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """BF16 safetensors (round to nearest even, as torch does)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
        raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _sentencepiece_model(pieces: list[tuple[str, float, int]]) -> bytes:
    """A minimal SentencePiece ModelProto: the pieces (text, score, type), add_dummy_prefix on."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def ld(field: int, payload: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    buf = b""
    for text, score, typ in pieces:
        piece = (
            ld(1, text.encode())
            + varint(2 << 3 | 5)
            + struct.pack("<f", score)
            + varint(3 << 3)
            + varint(typ)
        )
        buf += ld(1, piece)
    return buf + ld(3, varint(3 << 3) + varint(1))


def build_hf_phi3(folder: str | Path) -> Path:
    """A tiny Phi-3.5-style Hugging Face folder (config.json with longrope scaling, BF16
    model.safetensors, tokenizer.model, tokenizer_config.json), deterministic from its seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    e, f, n_layer, nh, nkv, hd, nv = 256, 512, 2, 4, 2, 64, HF_PHI3_VOCAB
    rng = np.random.default_rng([HF_PHI3_SEED, 1])
    cfg = {
        "architectures": ["Phi3ForCausalLM"],
        "hidden_size": e,
        "intermediate_size": f,
        "num_hidden_layers": n_layer,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "vocab_size": nv,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "type": "longrope",
            "long_factor": np.geomspace(1.0, 40.0, hd // 2).round(4).tolist(),
            "short_factor": (1.0 + rng.uniform(0.0, 0.5, hd // 2)).round(4).tolist(),
        },
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))

    def w(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": w((nv, e), 0.5)}
    for i in range(n_layer):
        b = f"model.layers.{i}."
        t[b + "self_attn.qkv_proj.weight"] = w((nh * hd + 2 * nkv * hd, e), 0.08)
        t[b + "self_attn.o_proj.weight"] = w((e, nh * hd), 0.05)
        t[b + "mlp.gate_up_proj.weight"] = w((2 * f, e), 0.05)
        t[b + "mlp.down_proj.weight"] = w((e, f), 0.05)
        t[b + "input_layernorm.weight"] = norm(e)
        t[b + "post_attention_layernorm.weight"] = norm(e)
    t["model.norm.weight"] = norm(e)
    t["lm_head.weight"] = w((nv, e), 0.15)
    _write_safetensors(folder / "model.safetensors", t)

    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(pieces) < 310:
        i = len(pieces) - 259
        pieces.append(("\u2581" + letters[i % 26] + letters[(i // 26) % 26], -float(i), 1))
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model(pieces))
    added = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"]
    tok_cfg = {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "added_tokens_decoder": {str(310 + j): {"content": a, "special": True} for j, a in enumerate(added)},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    return folder


def build_hf_phi3_gguf(folder: str | Path, out: str | Path) -> tuple[Path, str]:
    """Convert the tiny phi3 folder with Kvant's importer (preset Q8_0); (path, sha256)."""
    from engine.convert import convert_sync

    path = convert_sync(build_hf_phi3(folder), out, "Q8_0").path
    return Path(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()


def token_sequence(arch: str) -> np.ndarray:
    if arch == "phi3-hf":
        rng = np.random.default_rng([HF_PHI3_SEED, 99])
        return rng.integers(3, 310, size=N_TOKENS).astype(np.int32)
    s = SPECS[arch]
    rng = np.random.default_rng([s.seed, 99])
    return rng.integers(3, s.vocab, size=N_TOKENS).astype(np.int32)


N_DECODE = 24


def _llama_cpp(path: Path, arch: str) -> dict[str, np.ndarray]:
    import llama_cpp

    tokens = token_sequence(arch)
    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, logits_all=True, n_threads=THREADS, verbose=False)
    llm.reset()
    llm.eval(tokens.tolist())
    logits = np.asarray(llm.scores[:N_TOKENS], dtype=np.float32).copy()
    prompt = tokens[:N_PROMPT]
    llm.reset()
    llm.eval(prompt.tolist())
    greedy = []
    for _ in range(N_GREEDY):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    # llama.cpp's one-token path (n_batch=1: gemv and vec_dot kernels, not the batched ones) over
    # the first N_DECODE tokens: what Kvant's token-by-token decode must equal
    dec = llama_cpp.Llama(
        str(path), n_ctx=N_CTX, n_batch=1, n_ubatch=1, logits_all=True, n_threads=THREADS, verbose=False
    )
    dec.reset()
    dec.eval(tokens[:N_DECODE].tolist())
    extra = {"decode_logits": np.asarray(dec.scores[:N_DECODE], dtype=np.float32).copy()}
    if arch == "phi3":  # n_ctx beyond rope.scaling.original_context_length: the long rope factors
        llm = llama_cpp.Llama(str(path), n_ctx=LONG_N_CTX, logits_all=True, n_threads=THREADS, verbose=False)
        llm.eval(tokens.tolist())
        extra["logits_long_ctx"] = np.asarray(llm.scores[:N_TOKENS], dtype=np.float32).copy()
    return {
        **extra,
        "tokens": tokens,
        "logits": logits,
        "prompt": prompt,
        "greedy": np.array(greedy, np.int32),
        "llama_cpp_version": np.array(llama_cpp.__version__),
    }


def main(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for arch in argv or [*SPECS, "phi3-hf"]:
        with tempfile.TemporaryDirectory() as tmp:
            if arch == "phi3-hf":
                path, sha = build_hf_phi3_gguf(Path(tmp) / "tiny-phi3", Path(tmp) / f"{arch}.gguf")
            else:
                path, sha = build(arch, Path(tmp) / f"{arch}.gguf")
            size = path.stat().st_size
            fx = _llama_cpp(path, arch)
        dst = OUT / f"{arch}.npz"
        np.savez_compressed(dst, gguf_sha256=np.array(sha), **fx)
        lg = fx["logits"]
        print(
            f"{arch}: gguf {size / 1e6:.2f} MB sha {sha[:12]}, logits std {lg.std():.2f} "
            f"max {np.abs(lg).max():.2f}, greedy {fx['greedy'].tolist()} -> {dst.name} "
            f"({dst.stat().st_size / 1e3:.0f} kB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
