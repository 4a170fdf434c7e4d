"""Phi-3 / Phi-3.5 (dense), a port of llama.cpp's graph (src/models/phi3.cpp): fused ``attn_qkv``
(rows q ‖ k ‖ v), fused ``ffn_up`` (rows gate ‖ up, SwiGLU), RoPE in NEOX mode, queries scaled by
1/sqrt(head_dim) before K·Q.

Long-context variants carry ``rope_factors_short`` / ``rope_factors_long`` (per-pair frequency
divisors) and ``rope.scaling.attn_factor``: as llama.cpp, the short factors are used when the
context (``n_ctx``) fits in ``rope.scaling.original_context_length``, the long ones beyond, and the
attention factor scales cos/sin.  ``attention.sliding_window`` is ignored, as llama.cpp does
("Phi SWA is currently disabled"): every layer attends to the whole context.
The shared graph is :class:`engine.models._common.Decoder`."""

from __future__ import annotations

import numpy as np

from engine.models._common import MT, Decoder, DecoderParams, Weights, tensor_name


class Phi3(Decoder):
    ARCH = "phi3"
    NEOX = True
    FUSED_UP = True
    SCALE_Q = True

    @classmethod
    def rope_factors(cls, w: Weights, p: DecoderParams, n_ctx: int) -> np.ndarray | None:
        which = MT.ROPE_FACTORS_LONG if n_ctx > p.n_ctx_orig else MT.ROPE_FACTORS_SHORT
        name = tensor_name(which)
        return w.vector(name, p.n_rot // 2) if w.has(name) else None
