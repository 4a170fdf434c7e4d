"""Hugging Face model folders as conversion sources, written the way llama.cpp's convert_hf_to_gguf.py does.

A folder with ``config.json``, ``tokenizer.json`` and/or ``tokenizer.model``, and one or many
``*.safetensors`` (with ``model.safetensors.index.json``; F32, F16 or BF16). Supported:
``LlamaForCausalLM`` / ``MistralForCausalLM`` (llama), ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``,
``Phi3ForCausalLM`` (phi3), ``Gemma3ForCausalLM`` and the text part of
``Gemma3ForConditionalGeneration`` (gemma3).

What convert_hf_to_gguf.py does and this module repeats:

- tensor names through gguf-py's ``TensorNameMap``; ``lm_head`` dropped when embeddings are tied;
- llama: q_proj / k_proj rows permuted (``LlamaModel.permute``: heads' two rotary halves
  interleaved, as llama.cpp's rope expects); llama-3 rope scaling adds ``rope_freqs.weight``;
- gemma3: every ``*norm.weight`` gets +1 (Gemma stores norm weights as offsets from 1);
- phi3 (``Phi3MiniModel``): fused qkv_proj / gate_up_proj kept as they are, context length,
  original context length, rope dimensions and sliding window (0 when absent) in the metadata;
  with ``rope_scaling`` (longrope / su / yarn), ``rope_factors_long`` / ``rope_factors_short``
  tensors and ``rope.scaling.attn_factor``; the SentencePiece tokenizer.model unless the
  tokenizer class is ``GPT2Tokenizer`` (Phi-4);
- 1-D tensors are F32; 2-D keep the checkpoint's type (then the preset decides);
- metadata keys under ``{arch}.``, then the tokenizer: ``gpt2`` BPE from tokenizer.json (tokens,
  token types, merges) or ``llama`` SentencePiece from tokenizer.model (tokens, scores, types;
  read with a small protobuf decoder), special token ids, add_bos/eos, chat template.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.convert.rules import HParams
from engine.convert.source import SourceTensor, hparams_from_metadata
from engine.errors import ModelError
from engine.gguf import MetadataValue

ARCHES = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,
    "Phi3ForCausalLM": gguf.MODEL_ARCH.PHI3,
    "Gemma3ForCausalLM": gguf.MODEL_ARCH.GEMMA3,
    "Gemma3ForConditionalGeneration": gguf.MODEL_ARCH.GEMMA3,
}
_DTYPES = {"F32": (T.F32, "<f4"), "F16": (T.F16, "<f2"), "BF16": (T.BF16, "<u2")}
_SKIP_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)

# token types (llama.cpp's llama_token_type / gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class _Safetensors:
    """One .safetensors file, memory-mapped: u64 header length, JSON header, raw data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:
            self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mmap) < 8:
            raise ModelError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack_from("<Q", self._mmap, 0)
        if n > len(self._mmap) - 8:
            raise ModelError(f"{path}: header length {n} runs past the end of the file")
        try:
            header = json.loads(bytes(self._mmap[8 : 8 + n]))
        except ValueError as err:
            raise ModelError(f"{path}: the safetensors header is not JSON: {err}") from None
        self.base = 8 + n
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info.get("dtype")
            if dtype not in _DTYPES:
                raise ModelError(
                    f"{path}: tensor {name} has dtype {dtype}; only F32, F16 and BF16 are supported"
                )
            start, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype][1]).itemsize
            if end - start != size or self.base + end > len(self._mmap):
                raise ModelError(f"{path}: tensor {name} has inconsistent offsets")
            self.tensors[name] = (dtype, shape, start, end)

    def array(self, name: str) -> np.ndarray:
        dtype, shape, start, end = self.tensors[name]
        np_dtype = _DTYPES[dtype][1]
        count = (end - start) // np.dtype(np_dtype).itemsize
        return np.frombuffer(self._mmap, dtype=np_dtype, count=count, offset=self.base + start).reshape(shape)

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._mmap.close()


def _to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def permute_rows(n_rows: int, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Row order of convert_hf_to_gguf's LlamaModel.permute (new row i = old row perm[i])."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    idx = np.arange(n_rows)
    return idx.reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(n_rows)


class _HFTensor:
    def __init__(self, out: str, file: _Safetensors | None, src: str, dtype: str, shape: tuple[int, ...]):
        self.out, self.file, self.src, self.dtype, self.shape = out, file, src, dtype, shape
        self.perm: np.ndarray | None = None
        self.add_one = False
        self.values: np.ndarray | None = None  # generated tensors (rope_freqs)


class HFSource:
    """A Hugging Face model folder as a conversion :class:`~engine.convert.source.Source`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.description = str(self.folder)
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise ModelError(f"{self.folder}: no config.json, not a Hugging Face model folder")
        self.config = json.loads(cfg_path.read_text())
        archs = self.config.get("architectures") or []
        hf_arch = next((a for a in archs if a in ARCHES), None)
        if hf_arch is None:
            raise ModelError(
                f"{self.folder}: architecture {archs} is not supported "
                f"(supported: {', '.join(sorted(ARCHES))})"
            )
        self.model_arch = ARCHES[hf_arch]
        self.arch = gguf.MODEL_ARCH_NAMES[self.model_arch]
        self.hp = dict(self.config.get("text_config") or {}) if "text_config" in self.config else {}
        self.hp = {**self.config, **self.hp}
        self._files: list[_Safetensors] = []
        try:
            self._load_tensors()
            self.metadata = self._metadata()
        except BaseException:
            self.close()
            raise
        self.tensors = [self._spec(t) for t in self._tensors]
        self._by_out = {t.out: t for t in self._tensors}

    # --- tensors ------------------------------------------------------------------------------
    def _shards(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            names = sorted(set(weight_map.values()))
            return [self.folder / n for n in names]
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ModelError(f"{self.folder}: no *.safetensors files")
        return files

    def _load_tensors(self) -> None:
        hp = self.hp
        n_layer = int(hp["num_hidden_layers"])
        tmap = gguf.get_tensor_name_map(self.model_arch, n_layer)
        n_head = int(hp["num_attention_heads"])
        n_head_kv = int(hp.get("num_key_value_heads", n_head))
        tied = bool(self.config.get("tie_word_embeddings", hp.get("tie_word_embeddings", False)))
        if self.arch == "gemma3":
            tied = True  # Gemma 3 always ties lm_head to the embeddings
        self._tensors: list[_HFTensor] = []
        for path in self._shards():
            st = _Safetensors(path)
            self._files.append(st)
            for name, (dtype, shape, _, _) in st.tensors.items():
                key = name
                if key.startswith(_SKIP_PREFIXES) or key.endswith(".rotary_emb.inv_freq"):
                    continue
                if key.startswith("language_model."):
                    key = key[len("language_model.") :]
                if key.startswith("model.language_model."):
                    key = "model." + key[len("model.language_model.") :]
                if key == "lm_head.weight" and tied:
                    continue
                out = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
                if out is None:
                    raise ModelError(f"{path.name}: cannot map tensor {name} to a GGUF name")
                t = _HFTensor(out, st, name, dtype, shape)
                if self.arch == "llama" and out.endswith(("attn_q.weight", "attn_k.weight")):
                    kv = n_head if out.endswith("attn_q.weight") else n_head_kv
                    t.perm = permute_rows(shape[0], n_head, kv)
                if self.arch == "gemma3" and name.endswith("norm.weight"):
                    t.add_one = True
                self._tensors.append(t)
        rope = hp.get("rope_scaling") or {}
        if self.arch == "llama" and rope.get("rope_type", rope.get("type")) == "llama3":
            t = _HFTensor("rope_freqs.weight", None, "", "F32", (self._head_dim() // 2,))
            t.values = self._llama3_rope_factors(rope)
            self._tensors.insert(0, t)
        if self.arch == "phi3" and rope:  # generated tensors come first, as convert_hf_to_gguf yields them
            extra = []
            for name, values in self._phi3_rope_factors(rope):
                t = _HFTensor(name, None, "", "F32", values.shape)
                t.values = values
                extra.append(t)
            self._tensors[0:0] = extra

    def _phi3_rope_dims(self) -> int:
        hp = self.hp
        rot_pct = float(hp.get("partial_rotary_factor", 1.0))
        return int(rot_pct * int(hp["hidden_size"])) // int(hp["num_attention_heads"])

    def _phi3_rope_scaling(self, rope: dict) -> tuple[float, str]:
        """(attn_factor, scaling type) as convert_hf_to_gguf's Phi3MiniModel computes them."""
        hp = self.hp
        max_pos = int(hp.get("n_positions") or hp["max_position_embeddings"])
        orig = int(hp["original_max_position_embeddings"])
        scale = max_pos / orig
        kind = str(rope.get("rope_type", rope.get("type", ""))).lower()
        if kind in ("su", "longrope"):
            return (math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0), kind
        if kind == "yarn":
            return (0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0), kind
        raise ModelError(f"{self.folder}: phi3 rope_scaling type {kind!r} is not supported")

    def _phi3_rope_factors(self, rope: dict) -> list[tuple[str, np.ndarray]]:
        self._phi3_rope_scaling(rope)
        long_f, short_f = rope.get("long_factor"), rope.get("short_factor")
        if long_f is None or short_f is None:
            raise ModelError(f"{self.folder}: rope_scaling needs long_factor and short_factor")
        if len(long_f) != len(short_f) or len(long_f) != self._phi3_rope_dims() / 2:
            raise ModelError(f"{self.folder}: rope_scaling factors must have rope_dims / 2 entries")
        return [
            ("rope_factors_long.weight", np.asarray(long_f, np.float32)),
            ("rope_factors_short.weight", np.asarray(short_f, np.float32)),
        ]

    def _head_dim(self) -> int:
        hp = self.hp
        return int(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])

    def _llama3_rope_factors(self, rope: dict) -> np.ndarray:
        base = float(self.hp.get("rope_theta", 10000.0))
        dim = self._head_dim()
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor = float(rope.get("factor", 8.0))
        low = float(rope.get("low_freq_factor", 1.0))
        high = float(rope.get("high_freq_factor", 4.0))
        old = float(rope.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = old / low, old / high
        out = []
        for f in freqs:
            wl = 2 * math.pi / float(f)
            if wl < high_wl:
                out.append(1.0)
            elif wl > low_wl:
                out.append(factor)
            else:
                smooth = (old / wl - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return np.asarray(out, dtype=np.float32)

    def _spec(self, t: _HFTensor) -> SourceTensor:
        typ = T.F32 if len(t.shape) == 1 else _DTYPES[t.dtype][0]
        return SourceTensor(t.out, tuple(reversed(t.shape)), int(typ))

    def _full(self, t: _HFTensor, as_f32: bool) -> np.ndarray:
        if t.values is not None:
            return t.values
        a = t.file.array(t.src)
        if len(t.shape) == 1 or as_f32:
            a = _to_f32(a, t.dtype)
            if t.add_one:
                a = a + np.float32(1.0)
        if t.perm is not None:
            a = a[t.perm]
        return np.ascontiguousarray(a)

    def hparams(self) -> HParams:
        return hparams_from_metadata(self.metadata)

    def read_raw(self, name: str) -> np.ndarray:
        t = self._by_out[name]
        return self._full(t, as_f32=False).reshape(-1).view(np.uint8)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self._by_out[name]
        if t.values is not None or len(t.shape) == 1:
            return self._full(t, True).reshape(-1, t.shape[-1])[start:stop]
        a = t.file.array(t.src).reshape(-1, t.shape[-1])
        rows = a[t.perm[start:stop]] if t.perm is not None else a[start:stop]
        return _to_f32(rows, t.dtype)

    def close(self) -> None:
        for f in self._files:
            f.close()

    # --- metadata -----------------------------------------------------------------------------
    def _metadata(self) -> dict[str, MetadataValue]:
        hp, a = self.hp, self.arch
        u32 = lambda v: MetadataValue(V.UINT32, int(v))  # noqa: E731
        f32 = lambda v: MetadataValue(V.FLOAT32, float(v))  # noqa: E731
        meta: dict[str, MetadataValue] = {
            "general.architecture": MetadataValue(V.STRING, a),
            "general.type": MetadataValue(V.STRING, "model"),
            "general.name": MetadataValue(V.STRING, self.folder.name),
            f"{a}.block_count": u32(hp["num_hidden_layers"]),
            f"{a}.context_length": u32(hp.get("max_position_embeddings", 2048)),
            f"{a}.embedding_length": u32(hp["hidden_size"]),
            f"{a}.feed_forward_length": u32(hp["intermediate_size"]),
            f"{a}.attention.head_count": u32(hp["num_attention_heads"]),
            f"{a}.attention.head_count_kv": u32(hp.get("num_key_value_heads", hp["num_attention_heads"])),
            f"{a}.rope.freq_base": f32(hp.get("rope_theta", 10000.0)),
            f"{a}.attention.layer_norm_rms_epsilon": f32(hp.get("rms_norm_eps", 1e-6)),
        }
        if hp.get("head_dim"):
            meta[f"{a}.attention.key_length"] = u32(hp["head_dim"])
            meta[f"{a}.attention.value_length"] = u32(hp["head_dim"])
        if a == "llama":
            meta[f"{a}.vocab_size"] = u32(hp["vocab_size"])
            meta[f"{a}.rope.dimension_count"] = u32(self._head_dim())
        if a == "gemma3" and hp.get("sliding_window"):
            meta[f"{a}.attention.sliding_window"] = u32(hp["sliding_window"])
        if a == "phi3":
            max_pos = hp.get("n_positions") or hp["max_position_embeddings"]
            if "original_max_position_embeddings" not in hp:
                raise ModelError(f"{self.folder}: config.json has no original_max_position_embeddings")
            meta[f"{a}.context_length"] = u32(max_pos)
            meta[f"{a}.rope.scaling.original_context_length"] = u32(hp["original_max_position_embeddings"])
            meta[f"{a}.rope.dimension_count"] = u32(self._phi3_rope_dims())
            meta[f"{a}.attention.sliding_window"] = u32(hp.get("sliding_window") or 0)
            if hp.get("rope_scaling"):
                attn_factor, _ = self._phi3_rope_scaling(hp["rope_scaling"])
                meta[f"{a}.rope.scaling.attn_factor"] = f32(attn_factor)
        rope = hp.get("rope_scaling") or {}
        if a != "phi3" and rope.get("rope_type", rope.get("type")) in ("linear", "yarn") and "factor" in rope:
            meta[f"{a}.rope.scaling.type"] = MetadataValue(V.STRING, rope.get("rope_type", rope.get("type")))
            meta[f"{a}.rope.scaling.factor"] = f32(rope["factor"])
        meta["general.file_type"] = u32(1)
        meta.update(self._tokenizer_metadata())
        return meta

    def _tokenizer_metadata(self) -> dict[str, MetadataValue]:
        tok_cfg = _read_json(self.folder / "tokenizer_config.json") or {}
        vocab_size = int(self.hp.get("vocab_size", 0))
        spm = self.folder / "tokenizer.model"
        tj = self.folder / "tokenizer.json"
        phi3_spm = self.arch == "phi3" and tok_cfg.get("tokenizer_class") != "GPT2Tokenizer"
        if spm.is_file() and (self.arch == "gemma3" or phi3_spm or not tj.is_file()):
            meta = _sentencepiece_vocab(spm, tok_cfg, vocab_size)
            if self.arch == "gemma3":
                meta["tokenizer.ggml.add_space_prefix"] = MetadataValue(V.BOOL, False)
        elif tj.is_file():
            meta = _bpe_vocab(
                tj, tok_cfg, vocab_size, "qwen2" if self.arch.startswith("qwen") else "llama-bpe"
            )
        else:
            raise ModelError(f"{self.folder}: no tokenizer.json or tokenizer.model")
        tokens = meta["tokenizer.ggml.tokens"].value
        ids = {t: i for i, t in enumerate(tokens)}
        for role in ("bos", "eos", "unk", "pad"):
            tok = tok_cfg.get(f"{role}_token")
            if isinstance(tok, dict):
                tok = tok.get("content")
            if isinstance(tok, str) and tok in ids:
                meta[f"tokenizer.ggml.{role}_token_id"] = MetadataValue(V.UINT32, ids[tok])
        for flag in ("add_bos_token", "add_eos_token"):
            if isinstance(tok_cfg.get(flag), bool):
                meta[f"tokenizer.ggml.{flag}"] = MetadataValue(V.BOOL, tok_cfg[flag])
        template = tok_cfg.get("chat_template")
        if template is None and (self.folder / "chat_template.jinja").is_file():
            template = (self.folder / "chat_template.jinja").read_text()
        if isinstance(template, list):
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str):
            meta["tokenizer.chat_template"] = MetadataValue(V.STRING, template)
        return meta


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _added_tokens(tok_cfg: dict) -> dict[int, dict]:
    return {int(k): v for k, v in (tok_cfg.get("added_tokens_decoder") or {}).items()}


def _bpe_vocab(path: Path, tok_cfg: dict, vocab_size: int, pre: str) -> dict[str, MetadataValue]:
    tj = json.loads(path.read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(f"{path}: tokenizer type {model.get('type')} is not supported (BPE only)")
    reverse = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens", [])}
    for i, a in added.items():
        reverse[i] = a["content"]
    n = max(vocab_size, max(reverse) + 1)
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            a = added[i]
            looks_special = a["content"].startswith("<|") and a["content"].endswith("|>")
            types.append(CONTROL if a.get("special") or looks_special else USER_DEFINED)
            tokens.append(reverse[i])
        else:
            tokens.append(reverse[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "tokenizer.ggml.model": MetadataValue(V.STRING, "gpt2"),
        "tokenizer.ggml.pre": MetadataValue(V.STRING, pre),
        "tokenizer.ggml.tokens": MetadataValue(V.ARRAY, tokens, V.STRING),
        "tokenizer.ggml.token_type": MetadataValue(V.ARRAY, np.asarray(types, np.int32), V.INT32),
        "tokenizer.ggml.merges": MetadataValue(V.ARRAY, merges, V.STRING),
    }


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes):
    """Decode one protobuf message level: yields (field number, wire type, value)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ModelError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        yield field, wire, val


def read_sentencepiece(path: Path) -> tuple[list[tuple[str, float, int]], bool]:
    """(pieces as (text, score, type), add_dummy_prefix) from a SentencePiece ModelProto."""
    buf = path.read_bytes()
    pieces: list[tuple[str, float, int]] = []
    add_prefix = True
    try:
        for field, _, val in _fields(buf):
            if field == 1:
                text, score, typ = "", 0.0, NORMAL
                for f2, _, v2 in _fields(val):
                    if f2 == 1:
                        text = v2.decode("utf-8")
                    elif f2 == 2:
                        (score,) = struct.unpack("<f", v2)
                    elif f2 == 3:
                        typ = int(v2)
                pieces.append((text, score, typ))
            elif field == 3:
                for f2, _, v2 in _fields(val):
                    if f2 == 3:
                        add_prefix = bool(v2)
    except (IndexError, UnicodeDecodeError, struct.error) as err:
        raise ModelError(f"{path}: not a SentencePiece model ({err})") from None
    return pieces, add_prefix


def _sentencepiece_vocab(path: Path, tok_cfg: dict, vocab_size: int) -> dict[str, MetadataValue]:
    pieces, add_prefix = read_sentencepiece(path)
    n = max(vocab_size, len(pieces))
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i, (text, score, typ) in enumerate(pieces):
        tokens[i], scores[i], types[i] = text, score, typ
    for i, a in _added_tokens(tok_cfg).items():
        if i >= n:
            continue
        if types[i] != UNUSED and tokens[i] != a.get("content"):
            continue  # convert_hf_to_gguf keeps the SentencePiece piece when the two disagree
        tokens[i] = a["content"]
        types[i] = CONTROL if a.get("special") else USER_DEFINED
        scores[i] = -1000.0
    return {
        "tokenizer.ggml.model": MetadataValue(V.STRING, "llama"),
        "tokenizer.ggml.pre": MetadataValue(V.STRING, "default"),
        "tokenizer.ggml.tokens": MetadataValue(V.ARRAY, tokens, V.STRING),
        "tokenizer.ggml.scores": MetadataValue(V.ARRAY, np.asarray(scores, np.float32), V.FLOAT32),
        "tokenizer.ggml.token_type": MetadataValue(V.ARRAY, np.asarray(types, np.int32), V.INT32),
        "tokenizer.ggml.add_space_prefix": MetadataValue(V.BOOL, add_prefix),
    }
