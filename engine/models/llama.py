"""Llama 2 / 3 and Mistral, a port of llama.cpp's graph (src/models/llama.cpp): RoPE in NORM mode
(adjacent pairs), GQA, SwiGLU feed-forward, untied or tied output; optional rope frequency scaling
(``rope.scaling.factor``) and Llama 3's per-pair frequency divisors (the ``rope_freqs`` tensor).
The shared graph is :class:`engine.models._common.Decoder`."""

from __future__ import annotations

import numpy as np

from engine.models._common import MT, Decoder, DecoderParams, Weights, tensor_name


class Llama(Decoder):
    ARCH = "llama"
    NEOX = False

    @classmethod
    def rope_factors(cls, w: Weights, p: DecoderParams, n_ctx: int) -> np.ndarray | None:
        name = tensor_name(MT.ROPE_FREQS)
        return w.vector(name, p.n_rot // 2) if w.has(name) else None
