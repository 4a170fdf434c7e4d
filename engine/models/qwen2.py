"""Qwen 2 / 2.5, a port of llama.cpp's graph (src/models/qwen2.cpp): the llama graph with RoPE in
NEOX mode (pairs i, i + d/2) and biases on the q, k and v projections.
The shared graph is :class:`engine.models._common.Decoder`."""

from __future__ import annotations

from engine.models._common import Decoder


class Qwen2(Decoder):
    ARCH = "qwen2"
    NEOX = True
    QKV_BIAS = True
