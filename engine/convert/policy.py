"""Custom quantization policies on top of llama.cpp's presets.

A policy picks a type for a tensor by name (and shape), replacing llama.cpp's mixture rules for
the tensors it claims; user overrides (``--override RE=TYPE``) still win over it, tensors that
llama.cpp never quantizes (norms, router, 1-D) stay as they are, and llama.cpp's fallbacks for
rows that are not a multiple of the block size still apply afterwards.

``dynamic-1.58`` — in the spirit of unsloth's DeepSeek-R1 1.58-bit dynamic quants (routed
experts, ~88% of the weights, at ~1.6 bits; everything the model is sensitive to kept higher).
"Low" below means IQ1_S when an importance matrix is given (llama.cpp refuses IQ1_S without one),
else TQ1_0 (ternary, 1.69 bpw, needs none); "low+" means IQ2_XXS with an imatrix, else Q2_K.
Rules, first match wins (L = ``blk.L.``; n = block_count; H = the "head" layers: DeepSeek's
``leading_dense_block_count`` for MoE models, else max(1, n // 8) first layers):

=====================================================  ==========================================
tensor                                                 type
=====================================================  ==========================================
output.weight (lm_head; token_embd when tied)          Q6_K
token_embd.weight (untied)                             Q4_K
attn_v / attn_qkv / attn_kv_b / attn_v_b               Q6_K   (values: most sensitive)
attn_q_a / attn_kv_a_mqa (MLA low-rank down-proj.)     Q6_K
attn_output                                            Q5_K
other attention (attn_q, attn_k, attn_q_b, attn_k_b)   Q4_K
ffn_down in layers L < H                               Q6_K   (first dense layers)
ffn_gate / ffn_up in layers L < H                      Q4_K
shared experts (``*_shexp``)                           Q6_K
ffn_down(_exps) in layers H <= L < H + max(1, n // 16) low+   (the first down_proj matrices)
ffn_gate / ffn_up / ffn_down (routed ``*_exps`` or     low    (bulk FFN)
dense, all other layers)
anything else quantizable                              Q4_K
router (ffn_gate_inp), norms, biases, 1-D tensors      unchanged (F32)
=====================================================  ==========================================

The output file's ``general.file_type`` is IQ1_S with an imatrix, TQ1_0 without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gguf import GGMLQuantizationType as T

from engine.convert.rules import HParams, layer_of
from engine.errors import QuantError

PolicyFn = Callable[[str, tuple[int, ...], HParams, bool], "tuple[T, str] | None"]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    assign: PolicyFn
    preset_with_imatrix: str
    preset_without_imatrix: str

    def preset(self, has_imatrix: bool) -> str:
        return self.preset_with_imatrix if has_imatrix else self.preset_without_imatrix


def dynamic_158(name: str, dims: tuple[int, ...], hp: HParams, has_imatrix: bool) -> tuple[T, str] | None:
    low = T.IQ1_S if has_imatrix else T.TQ1_0
    low_plus = T.IQ2_XXS if has_imatrix else T.Q2_K
    n = max(1, hp.n_layer)
    head = hp.n_dense_lead if hp.n_expert > 1 and hp.n_dense_lead > 0 else max(1, n // 8)
    first_down = head + max(1, n // 16)
    layer = layer_of(name)
    if name == "output.weight":
        return T.Q6_K, "dynamic-1.58: output 6-bit"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return T.Q4_K, "dynamic-1.58: embeddings 4-bit"  # tied embeddings are mapped to output by bind()
    if ".attn_" in name:
        if any(k in name for k in ("attn_v.", "attn_qkv.", "attn_kv_b.", "attn_v_b.")):
            return T.Q6_K, "dynamic-1.58: attention values 6-bit"
        if any(k in name for k in ("attn_q_a.", "attn_kv_a_mqa.")):
            return T.Q6_K, "dynamic-1.58: MLA low-rank 6-bit"
        if "attn_output." in name:
            return T.Q5_K, "dynamic-1.58: attention output 5-bit"
        return T.Q4_K, "dynamic-1.58: attention 4-bit"
    is_ffn = any(k in name for k in (".ffn_gate", ".ffn_up", ".ffn_down"))
    if is_ffn and 0 <= layer < head:
        if ".ffn_down" in name:
            return T.Q6_K, "dynamic-1.58: first layers, down 6-bit"
        return T.Q4_K, "dynamic-1.58: first layers 4-bit"
    if "_shexp" in name:
        return T.Q6_K, "dynamic-1.58: shared expert 6-bit"
    if ".ffn_down" in name and head <= layer < first_down:
        return low_plus, f"dynamic-1.58: first down_proj {low_plus.name}"
    if is_ffn:
        return low, f"dynamic-1.58: bulk FFN {low.name}"
    return T.Q4_K, "dynamic-1.58: other 4-bit"


POLICIES: dict[str, Policy] = {
    "dynamic-1.58": Policy("dynamic-1.58", dynamic_158, "IQ1_S", "TQ1_0"),
}


def get_policy(policy: str | Policy | None) -> Policy | None:
    if policy is None or isinstance(policy, Policy):
        return policy
    key = str(policy).strip().lower()
    if key not in POLICIES:
        raise QuantError(f"Unknown policy {policy!r}; known policies: {', '.join(POLICIES)}.")
    return POLICIES[key]


def bind(policy: Policy | None, hp: HParams, has_imatrix: bool, tied: bool):
    """The ``policy(name, dims)`` callable :func:`engine.convert.rules.choose_types` takes."""
    if policy is None:
        return None

    def fn(name: str, dims: tuple[int, ...]) -> tuple[T, str] | None:
        if tied and name == "token_embd.weight":
            return policy.assign("output.weight", dims, hp, has_imatrix)
        return policy.assign(name, dims, hp, has_imatrix)

    return fn
