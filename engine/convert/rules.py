"""llama.cpp's per-tensor type selection (``src/llama-quant.cpp``), ported rule for rule.

:func:`choose_types` reproduces what ``llama_model_quantize`` decides for every tensor of a model:
which tensors may be quantized at all (``tensor_allows_quantization``), the preset's mixture
(``llama_tensor_get_type_impl``: use_more_bits, the ``n_attention_wv`` / ``i_ffn_down`` counters,
tied embeddings, n_gqa, 8-expert and 70B special cases), user overrides by regex (llama.cpp's
``--tensor-type``, which skip the mixture rules), and the fallbacks for rows that are not a multiple
of the block size. Tensors must be given in llama.cpp's processing order (:func:`llama_order`),
because the counters depend on it.
"""

# ruff: noqa: SIM114  (branches kept one-to-one with the C source)
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.errors import QuantError

T = GGMLQuantizationType

# llama_ftype ids (llama.h) and llama_ftype_get_default_type.
FTYPES: dict[str, tuple[int, T]] = {
    "F32": (0, T.F32),
    "F16": (1, T.F16),
    "Q4_0": (2, T.Q4_0),
    "Q4_1": (3, T.Q4_1),
    "Q8_0": (7, T.Q8_0),
    "Q5_0": (8, T.Q5_0),
    "Q5_1": (9, T.Q5_1),
    "Q2_K": (10, T.Q2_K),
    "Q3_K_S": (11, T.Q3_K),
    "Q3_K_M": (12, T.Q3_K),
    "Q3_K_L": (13, T.Q3_K),
    "Q4_K_S": (14, T.Q4_K),
    "Q4_K_M": (15, T.Q4_K),
    "Q5_K_S": (16, T.Q5_K),
    "Q5_K_M": (17, T.Q5_K),
    "Q6_K": (18, T.Q6_K),
    "IQ2_XXS": (19, T.IQ2_XXS),
    "IQ2_XS": (20, T.IQ2_XS),
    "Q2_K_S": (21, T.Q2_K),
    "IQ3_XS": (22, T.IQ3_S),
    "IQ3_XXS": (23, T.IQ3_XXS),
    "IQ1_S": (24, T.IQ1_S),
    "IQ4_NL": (25, T.IQ4_NL),
    "IQ3_S": (26, T.IQ3_S),
    "IQ3_M": (27, T.IQ3_S),
    "IQ2_S": (28, T.IQ2_XS),
    "IQ2_M": (29, T.IQ2_S),
    "IQ4_XS": (30, T.IQ4_XS),
    "IQ1_M": (31, T.IQ1_M),
    "BF16": (32, T.BF16),
    "TQ1_0": (36, T.TQ1_0),
    "TQ2_0": (37, T.TQ2_0),
    "MXFP4_MOE": (38, T.MXFP4),
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
FTYPE_NAMES = {fid: name for name, (fid, _) in FTYPES.items()}

_IQ12 = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_UNQUANTIZED = {T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64}

# tensor_allows_quantization: substrings that keep a tensor as it is
_KEEP_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)

_LAYER = re.compile(r"^blk\.(-?\d+)\.")


def resolve_preset(name: str) -> str:
    """The canonical llama.cpp preset name for ``name`` (any case; Q4_K means Q4_K_M)."""
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
    if key not in FTYPES:
        raise QuantError(f"Unknown preset {name!r}; known presets: {', '.join(FTYPES)}.")
    return key


def type_by_name(name: str) -> T:
    try:
        return T[str(name).strip().upper()]
    except KeyError:
        known = ", ".join(t.name for t in T)
        raise QuantError(f"Unknown tensor type {name!r}; known types: {known}.") from None


def is_quantized(t: int) -> bool:
    return T(t) not in _UNQUANTIZED


def block_size(t: int) -> int:
    return GGML_QUANT_SIZES[T(t)][0]


def layer_of(name: str) -> int:
    """The ``blk.N.`` layer of a tensor name, -1 for non-block tensors (llama.cpp's sscanf)."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def llama_order(names: Sequence[str]) -> list[str]:
    """llama_model_loader's ``weights_map`` order: non-block tensors first, then by layer, then by name."""
    return sorted(names, key=lambda n: (layer_of(n), n.encode("utf-8")))


def n_dims(dims: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    for i in range(len(dims) - 1, 0, -1):
        if dims[i] > 1:
            return i + 1
    return 1


def allows_quantization(name: str, dims: Sequence[int]) -> bool:
    """tensor_allows_quantization with default parameters."""
    if n_dims(dims) < 2 or not name.endswith("weight"):
        return False
    if any(s in name for s in _KEEP_SUBSTRINGS):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for sub, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if sub in name:
            return cat
    return "other"


def _is_attn_v(cat: str) -> bool:
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a: int, b: int) -> int:
    return a - _cdiv(a, b) * b


def use_more_bits(i: int, n: int) -> bool:
    return i < _cdiv(n, 8) or i >= _cdiv(7 * n, 8) or _cmod(i - _cdiv(n, 8), 3) == 2


@dataclass(frozen=True, slots=True)
class HParams:
    """The hyperparameters llama.cpp's rules look at."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    n_dense_lead: int = 0  # leading dense (non-MoE) blocks of MoE models (DeepSeek)

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass(frozen=True, slots=True)
class TensorIn:
    name: str
    dims: tuple[int, ...]  # ggml order (ne0 first)
    type: int


@dataclass(frozen=True, slots=True)
class Choice:
    type: T
    reason: str  # "keep", "preset", "override", "fallback ..."


class _State:
    """quantize_state_impl: counters updated while walking tensors in order."""

    def __init__(self, hp: HParams, ftype: str, has_imatrix: bool, tied: bool, n_attention_wv: int) -> None:
        self.hp = hp
        self.ftype = ftype
        self.has_imatrix = has_imatrix
        self.tied = tied
        self.n_attention_wv = n_attention_wv
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = hp.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0

    def layer_info(self, i: int, n: int, name: str) -> tuple[int, int]:
        if max(1, self.hp.n_expert) > 1:
            layer = layer_of(name)
            if layer < 0 or layer >= n:
                raise QuantError(f"Cannot determine the layer of tensor {name} (model has {n} layers).")
            return layer, n
        return i, n

    def impl(self, new: T, t: TensorIn, cat: str) -> T:
        f = self.ftype
        hp = self.hp
        if cat == "output" or (self.tied and cat == "token_embd"):
            nx = t.dims[0]
            if f == "MXFP4_MOE":
                new = T.Q8_0
            elif hp.arch == "falcon" or nx % block_size(new) != 0:
                new = T.Q8_0
            elif f in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                new = T.Q5_K
            elif new != T.Q8_0:
                new = T.Q6_K
        elif f == "MXFP4_MOE":
            new = T.MXFP4 if len(t.dims) > 2 and t.dims[2] > 1 else T.Q8_0
        elif cat == "token_embd":
            if f in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
                new = T.Q2_K
            elif f in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
                new = T.IQ3_S
            elif f in ("TQ1_0", "TQ2_0"):
                new = T.Q4_K
        elif f in _IQ12:
            if _is_attn_v(cat):
                if hp.n_gqa >= 4 or hp.n_expert >= 4:
                    new = T.Q4_K
                else:
                    new = T.IQ3_S if f in ("IQ2_S", "IQ2_M") else T.Q2_K
                self.i_attention_wv += 1
            elif hp.n_expert == 8 and cat == "attn_k":
                new = T.Q4_K
            elif cat == "ffn_down":
                if self.i_ffn_down < _cdiv(self.n_ffn_down, 8):
                    new = T.IQ3_S if f in ("IQ2_S", "IQ2_M") else T.Q2_K
                self.i_ffn_down += 1
            elif cat == "attn_output":
                if hp.n_expert == 8:
                    new = T.Q5_K
                elif f in ("IQ1_S", "IQ1_M"):
                    new = T.IQ2_XXS
                elif f in ("IQ2_S", "IQ2_M"):
                    new = T.IQ3_S
        elif _is_attn_v(cat):
            gqa4 = hp.n_gqa >= 4
            if f == "Q2_K":
                new = T.Q4_K if gqa4 else T.Q3_K
            elif f == "Q2_K_S" and gqa4:
                new = T.Q4_K
            elif f == "IQ3_XXS":
                new = T.Q4_K if gqa4 else (T.IQ3_S if not self.has_imatrix else T.IQ3_XXS)
            elif f in ("IQ3_XS", "IQ3_S") and gqa4:
                new = T.Q4_K
            elif f == "IQ3_M":
                new = T.Q4_K
            elif f == "Q3_K_M":
                new = T.Q5_K if self.i_attention_wv < 2 else T.Q4_K
            elif f == "Q3_K_L":
                new = T.Q5_K
            elif f in ("IQ4_NL", "IQ4_XS") and gqa4:
                new = T.Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(self.i_attention_wv, self.n_attention_wv):
                new = T.Q6_K
            elif f == "Q4_K_S" and self.i_attention_wv < 4:
                new = T.Q5_K
            if hp.is_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
            if hp.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
        elif cat == "attn_k":
            if hp.n_expert == 8:
                new = T.Q8_0
            elif f == "IQ3_XS":
                new = T.IQ3_XXS
            elif f == "IQ3_XXS":
                new = T.IQ2_S
        elif cat == "attn_q":
            if f == "IQ3_XS":
                new = T.IQ3_XXS
            elif f == "IQ3_XXS":
                new = T.IQ2_S
        elif cat == "ffn_down":
            i, n = self.layer_info(self.i_ffn_down, self.n_ffn_down, t.name)
            falcon = hp.arch == "falcon"
            if f == "Q2_K":
                new = T.Q3_K
            elif f == "Q2_K_S":
                if i < _cdiv(n, 8):
                    new = T.Q4_K
            elif f == "IQ3_XXS" and not self.has_imatrix:
                new = T.Q4_K if i < _cdiv(n, 8) else T.Q3_K
            elif f == "Q3_K_M":
                if i < _cdiv(n, 16):
                    new = T.Q5_K
                elif not falcon or use_more_bits(i, n):
                    new = T.Q4_K
                else:
                    new = T.Q3_K
            elif f == "IQ3_M" and (i < _cdiv(n, 8) or (hp.n_expert == 8 and use_more_bits(i, n))):
                new = T.Q4_K
            elif f == "Q3_K_L":
                new = T.Q4_K if falcon else T.Q5_K
            elif f == "Q4_K_M":
                if falcon:
                    new = T.Q6_K if i < _cdiv(n, 16) else (T.Q5_K if use_more_bits(i, n) else T.Q4_K)
                elif use_more_bits(i, n):
                    new = T.Q6_K
            elif i < _cdiv(n, 8) and f in ("IQ4_NL", "IQ4_XS") and not self.has_imatrix:
                new = T.Q5_K
            elif f == "Q5_K_M" and use_more_bits(i, n):
                new = T.Q6_K
            elif f == "Q4_K_S" and not falcon and i < _cdiv(n, 8):
                new = T.Q5_K
            elif f in ("Q4_0", "Q5_0") and self.has_imatrix and i < _cdiv(n, 8):
                new = T.Q4_1 if f == "Q4_0" else T.Q5_1
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if hp.arch != "falcon":
                if hp.n_expert == 8:
                    if f in (
                        "Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL",
                        "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS",
                    ):  # fmt: skip
                        new = T.Q5_K
                else:
                    new = {
                        "Q2_K": T.Q3_K,
                        "IQ3_XXS": T.IQ3_S,
                        "Q3_K_M": T.Q4_K,
                        "Q3_K_L": T.Q5_K,
                        "IQ3_M": T.Q4_K,
                    }.get(f, new)
            elif f == "Q3_K_L":
                new = T.Q4_K
        elif cat == "attn_qkv":  # unreachable (attn_qkv is handled as attn_v above), kept as in C
            if f in ("Q3_K_M", "Q3_K_L", "IQ3_M"):
                new = T.Q4_K
            elif f == "Q4_K_M":
                new = T.Q5_K
            elif f == "Q5_K_M":
                new = T.Q6_K
        elif cat == "ffn_gate":
            i, n = self.layer_info(self.i_ffn_gate, self.n_ffn_gate, t.name)
            if f == "IQ3_XS" and _cdiv(n, 8) <= i < _cdiv(7 * n, 8):
                new = T.IQ3_XXS
            self.i_ffn_gate += 1
        elif cat == "ffn_up":
            i, n = self.layer_info(self.i_ffn_up, self.n_ffn_up, t.name)
            if f == "IQ3_XS" and _cdiv(n, 8) <= i < _cdiv(7 * n, 8):
                new = T.IQ3_XXS
            self.i_ffn_up += 1
        return new


_FALLBACK = {
    T.IQ1_S: T.IQ4_NL,
    T.IQ1_M: T.IQ4_NL,
    T.IQ2_XXS: T.IQ4_NL,
    T.IQ2_XS: T.IQ4_NL,
    T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL,
    T.IQ3_S: T.IQ4_NL,
    T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0,
    T.Q3_K: T.Q4_0,
    T.TQ1_0: T.Q4_0,
    T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}


def fallback(name: str, ncols: int, target: T) -> tuple[T, str | None]:
    """tensor_type_fallback: a compatible type when ``ncols`` is not a multiple of the block."""
    if ncols % block_size(target) == 0:
        return target, None
    new = _FALLBACK.get(target, target)  # types without a fallback of their own go straight to F16
    if ncols % block_size(new) != 0:
        new = T.F16
    return new, f"row length {ncols} is not a multiple of {block_size(target)} ({target.name} -> {new.name})"


def requires_imatrix(name: str, t: T, ftype: str) -> bool:
    """tensor_requires_imatrix."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if t in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S):
        return True
    return t == T.Q2_K and ftype == "Q2_K_S"


def choose_types(
    tensors: Sequence[TensorIn],
    hp: HParams,
    preset: str,
    *,
    has_imatrix: bool = False,
    overrides: Sequence[tuple[str, T]] = (),
    pure: bool = False,
    policy: Callable[[str, tuple[int, ...]], tuple[T, str] | None] | None = None,
) -> list[Choice]:
    """The target type of each tensor, as llama_model_quantize picks it (tensors in llama order).

    ``overrides`` are llama.cpp's ``--tensor-type`` (first regex searched in the name wins, and the
    tensor skips the mixture rules). ``policy(name, dims)`` may return ``(type, reason)`` to replace the
    mixture rules for a tensor (Kvant's custom policies); None leaves it to llama.cpp's rules.
    """
    ftype = resolve_preset(preset)
    default = FTYPES[ftype][1]
    names = [t.name for t in tensors]
    n_wv = sum(_is_attn_v(category(n)) for n in names)
    state = _State(hp, ftype, has_imatrix, "output.weight" not in names, n_wv)
    patterns = [(re.compile(p), typ) for p, typ in overrides]
    out: list[Choice] = []
    for t in tensors:
        if not allows_quantization(t.name, t.dims):
            out.append(Choice(T(t.type), "keep"))
            continue
        new = default
        reason = "preset"
        if is_quantized(default):
            manual = False
            for pattern, typ in patterns:
                if pattern.search(t.name):
                    new = typ
                    reason = f"override {pattern.pattern}"
                    manual = True
                    break
            if not manual and policy is not None:
                picked = policy(t.name, t.dims)
                if picked is not None:
                    new, reason = picked
                    manual = True
            if not manual and not pure:
                new = state.impl(new, t, category(t.name))
            new, why = fallback(t.name, t.dims[0], new)
            if why:
                reason = f"fallback: {why}"
        out.append(Choice(new, reason))
    return out
