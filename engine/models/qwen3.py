"""Qwen 3 (dense), a port of llama.cpp's graph (src/models/qwen3.cpp): the llama graph with RoPE in
NEOX mode and a per-head RMSNorm of q and k (``attn_q_norm``, ``attn_k_norm``) before RoPE; the head
dimension (``attention.key_length``) may differ from n_embd / n_head.
The shared graph is :class:`engine.models._common.Decoder`."""

from __future__ import annotations

from engine.models._common import Decoder


class Qwen3(Decoder):
    ARCH = "qwen3"
    NEOX = True
    QK_NORM = True
