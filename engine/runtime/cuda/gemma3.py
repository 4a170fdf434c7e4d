"""Gemma 3 layers on the GPU: the last layers of a :class:`engine.models.gemma3.Gemma3` (and, when
all of them are there, the output layer), their weights uploaded once as quantized blocks, their KV
cache on the device in fp16.  Per forward only activations move: the hidden state of the batch goes
up after the CPU layers (and between GPUs), and the logits (or the hidden state) come back.

The graph is the CPU one, op for op (see engine/models/gemma3.py), with the CUDA kernels of
:mod:`engine.runtime.cuda.kernels`.  One token at a time (decode, no observer), it runs as
programs built at load time (:mod:`.decode`): preallocated buffers, launches configured once, the
q/k/v and gate/up weights of one type stacked into one mat-mul, and the kernels of
:mod:`.fused_kernels` -- 9 launches per layer and no allocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.runtime.cuda import decode as dec
from engine.runtime.cuda import device as D
from engine.runtime.cuda import fused_kernels as FK
from engine.runtime.cuda import kernels as K
from engine.runtime.cuda.layers import GpuLayers
from engine.runtime.kv_cache import layer_slots


@dataclass(eq=False)
class _DeviceLayer:
    il: int
    arena: D.DeviceArena
    attn_norm: Any
    wq: D.DeviceQWeight
    wk: D.DeviceQWeight
    wv: D.DeviceQWeight
    q_norm: Any
    k_norm: Any
    wo: D.DeviceQWeight
    post_attn_norm: Any
    ffn_norm: Any
    w_gate: D.DeviceQWeight
    w_up: D.DeviceQWeight
    w_down: D.DeviceQWeight
    post_ffw_norm: Any
    kc: Any
    vc: Any
    slot_pos: Any
    window: int
    qkv: dec.Stacks  # wq, wk, wv as one stack per weight type (the fields above are row views)
    ffn: dec.Stacks  # w_gate, w_up likewise


class Gemma3Gpu(GpuLayers):
    """Layers ``first_layer .. n_layer-1`` of ``model`` on the GPUs of ``arenas`` (one arena per
    GPU layer, consecutive layers on the same device), plus the output layer if ``output``."""

    def __init__(self, model: Any, first_layer: int, arenas: list[D.DeviceArena], output: bool) -> None:
        p = model.params
        self.params = p
        self.output_name = "token_embd.weight"  # tied output
        self.final_softcap = float(p.final_softcap)
        self.first_layer = first_layer
        self.n_ctx = model.n_ctx
        self.round_f16 = model.cache.round_f16
        self.fp16_gelu = model.fp16_gelu
        self.layers: list[_DeviceLayer] = []
        self.arenas = list(dict.fromkeys(arenas))
        self.n_past = 0
        self.decode: list[dec.Group] = []  # per device: the one-token programs (decode.py)
        try:
            self._upload(model, first_layer, arenas, output)
        except D.GpuOutOfMemory as err:
            err.loaded_layers = len(self.layers)
            self.close()
            raise

    def _upload(self, model: Any, first_layer: int, arenas: list[D.DeviceArena], output: bool) -> None:
        p = self.params
        max_batch = model.cache.max_batch
        self.output = None
        for il, arena in zip(range(first_layer, p.n_layer), arenas, strict=True):
            L = model.layers[il]
            with arena.on(), arena.loading(f"layer {il}"):
                w = p.window(il)
                slots = layer_slots(self.n_ctx, w, max_batch)  # the CPU cache's sizing

                def up(a, arena=arena):
                    return arena.upload(np.asarray(a, np.float32))

                def qw(wt, arena=arena):
                    return D.DeviceQWeight.upload(arena, wt)

                attn, qkv = D.upload_stacked(arena, [("q", L.wq), ("k", L.wk), ("v", L.wv)])
                ffn, ffn_stacks = D.upload_stacked(arena, [("gate", L.w_gate), ("up", L.w_up)])
                layer = _DeviceLayer(
                    il=il,
                    arena=arena,
                    attn_norm=up(L.attn_norm),
                    wq=attn["q"],
                    wk=attn["k"],
                    wv=attn["v"],
                    q_norm=up(L.q_norm),
                    k_norm=up(L.k_norm),
                    wo=qw(L.wo),
                    post_attn_norm=up(L.post_attn_norm),
                    ffn_norm=up(L.ffn_norm),
                    w_gate=ffn["gate"],
                    w_up=ffn["up"],
                    w_down=qw(L.w_down),
                    post_ffw_norm=up(L.post_ffw_norm),
                    kc=arena.empty((slots, p.n_head_kv, p.head_dim), np.uint16),
                    vc=arena.empty((slots, p.n_head_kv, p.head_dim), np.uint16),
                    slot_pos=arena.upload(np.full(slots, -1, np.int64)),
                    window=w,
                    qkv=qkv,
                    ffn=ffn_stacks,
                )
                self.layers.append(layer)
        if output:
            arena = arenas[-1] if arenas else None
            if arena is None:
                raise ValueError("the output layer goes on the GPU of the last layer")
            with arena.on(), arena.loading("the output layer"):
                self.output = (D.DeviceQWeight.upload(arena, model.tok_embd), arena.upload(model.output_norm))
        self.decode = [self._decode_group(arena, layers) for arena, layers in dec.groups(self.layers)]

    # ------------------------------------------------------------------ the graph (forward: GpuLayers)

    def _layer(self, L: _DeviceLayer, x, positions, pos0: int, last_only: bool, see):
        p = self.params
        lc = L.arena.launch
        n = x.shape[0]
        eps = np.float32(p.eps)
        il = L.il

        def look(name: str, a) -> None:
            if see is not None:
                see(name, a.copy_to_host())

        h = D.rmsnorm(lc, x, L.attn_norm, eps)
        if see is not None:
            for t in ("attn_q", "attn_k", "attn_v"):
                look(f"blk.{il}.{t}.weight", h)
        acts: dict[str, Any] = {}

        def act(w: D.DeviceQWeight, a, cache: dict[str, Any]):
            if w.act_type not in cache:
                cache[w.act_type] = D.quantize(lc, w.act_type, a)
            return cache[w.act_type]

        q = D.matmul(lc, L.wq, act(L.wq, h, acts))
        k = D.matmul(lc, L.wk, act(L.wk, h, acts))
        v = D.matmul(lc, L.wv, act(L.wv, h, acts))
        q = D.rmsnorm(lc, q.reshape(n * p.n_head, p.head_dim), L.q_norm, eps).reshape(n, p.n_head, p.head_dim)
        k = D.rmsnorm(lc, k.reshape(n * p.n_head_kv, p.head_dim), L.k_norm, eps).reshape(
            n, p.n_head_kv, p.head_dim
        )
        v = v.reshape(n, p.n_head_kv, p.head_dim)
        base, fscale = p.rope(il)
        D.rope(lc, q, positions, base, fscale, scale=p.attn_scale, round_f16=self.round_f16)
        D.rope(lc, k, positions, base, fscale)
        total = n * p.n_head_kv * p.head_dim
        K.kv_write[D._blocks(total, lc.elem_threads, lc), lc.elem_threads](k, v, L.kc, L.vc, L.slot_pos, pos0)
        ns = min(L.kc.shape[0], pos0 + n)
        a = D.attention(lc, q, L.kc, L.vc, L.slot_pos, ns, positions, L.window, self.round_f16)
        a = a.reshape(n, p.n_head * p.head_dim)
        look(f"blk.{il}.attn_output.weight", a)
        a = D.matmul(lc, L.wo, D.quantize(lc, L.wo.act_type, a))
        if last_only and il == p.n_layer - 1:
            a, x = a[n - 1 :], x[n - 1 :]
        x = D.rmsnorm(lc, a, L.post_attn_norm, eps, res=x)
        h = D.rmsnorm(lc, x, L.ffn_norm, eps)
        if see is not None:
            look(f"blk.{il}.ffn_gate.weight", h)
            look(f"blk.{il}.ffn_up.weight", h)
        acts = {}
        f = D.geglu(
            lc,
            D.matmul(lc, L.w_gate, act(L.w_gate, h, acts)),
            D.matmul(lc, L.w_up, act(L.w_up, h, acts)),
            self.fp16_gelu,
        )
        look(f"blk.{il}.ffn_down.weight", f)
        f = D.matmul(lc, L.w_down, D.quantize(lc, L.w_down.act_type, f))
        return D.rmsnorm(lc, f, L.post_ffw_norm, eps, res=x)

    def _decode_group(self, arena: D.DeviceArena, layers: list[_DeviceLayer]) -> dec.Group:
        """Buffers and launches of one token through ``layers`` (all on ``arena``): the graph of
        :meth:`_layer` with fused kernels; the end of a layer (post-FFN norm and residual) and the
        next layer's attention norm and quantization are one launch."""
        p = self.params
        out = self.output if layers[-1] is self.layers[-1] else None
        f32 = np.float32
        nq, nkv = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
        attn_t = [[w.act_type for w in (L.wq, L.wk, L.wv)] for L in layers]
        ffn_t = [[L.w_gate.act_type, L.w_up.act_type] for L in layers]
        out_t = [out[0].act_type] if out else []
        with arena.on(), arena.loading("decode buffers"):
            E = arena.empty
            x, a = E((1, p.n_embd), f32), E((1, p.n_embd), f32)
            h = dec.Codes(arena, E((1, p.n_embd), f32), [t for ts in (*attn_t, *ffn_t, out_t) for t in ts])
            qkv = E((nq + 2 * nkv,), f32)
            q, att = E((1, p.n_head, p.head_dim), f32), E((1, p.n_head, p.head_dim), f32)
            ac = dec.Codes(arena, att.reshape(1, nq), [L.wo.act_type for L in layers])
            gu = E((2 * p.n_ff,), f32)
            fc = dec.Codes(arena, E((1, p.n_ff), f32), [L.w_down.act_type for L in layers])
            qpos = E((1,), np.int64)
            scores = E((p.n_head, max(L.kc.shape[0] for L in layers)), f32)
            none = E((0,), f32)
            logits = E((1, p.n_vocab), f32) if out else None
        lc = arena.launch
        eps = np.float32(p.eps)
        gelu = FK.GELU_F16 if self.fp16_gelu else FK.GELU
        body = dec.Program(arena)
        dec.add_residual(body, FK.NO_RESIDUAL, x, none, none, x, layers[0].attn_norm, eps, h, attn_t[0])
        for i, L in enumerate(layers):
            off = dec.add_stack_matmuls(body, L.qkv, h, qkv)
            base, fscale = p.rope(L.il)
            head = (qkv, off["q"], off["k"], off["v"], L.q_norm, L.k_norm, eps)
            tail = (D._theta_scale(f32(base), p.head_dim), np.float64(fscale), f32(p.attn_scale))
            tail += (bool(self.round_f16), q, L.kc, L.vc, L.slot_pos, qpos)
            heads = D._blocks(p.n_head + p.n_head_kv, 1, lc)
            body.add(FK.gemma_qk_rope_kv, heads, lc.row_threads, (*head, *tail))
            cache = (L.kc, L.vc, L.slot_pos, qpos)
            dec.add_attention(body, q, cache, L.window, bool(self.round_f16), scores, ac, [L.wo.act_type])
            body.add_call(D.matmul_call(lc, L.wo, ac.acts[L.wo.act_type], a))
            dec.add_residual(body, FK.ADD_NORMED, a, none, L.post_attn_norm, x, L.ffn_norm, eps, h, ffn_t[i])
            off = dec.add_stack_matmuls(body, L.ffn, h, gu)
            dec.add_glu(body, gu, off["gate"], off["up"], gelu, fc, [L.w_down.act_type])
            body.add_call(D.matmul_call(lc, L.w_down, fc.acts[L.w_down.act_type], a))
            if i + 1 < len(layers):
                nxt = layers[i + 1].attn_norm
                dec.add_residual(body, FK.ADD_NORMED, a, none, L.post_ffw_norm, x, nxt, eps, h, attn_t[i + 1])
        post = layers[-1].post_ffw_norm
        to_hidden = dec.Program(arena)
        dec.add_residual(to_hidden, FK.ADD_NORMED, a, none, post, x, none, eps, h, [])
        to_logits = None
        if out is not None:
            w_out, norm = out
            to_logits = dec.Program(arena)
            dec.add_residual(to_logits, FK.ADD_NORMED, a, none, post, x, norm, eps, h, out_t)
            to_logits.add_call(D.matmul_call(lc, w_out, h.acts[w_out.act_type], logits))
            if p.final_softcap > 0:
                grid = D._blocks(p.n_vocab, lc.elem_threads, lc)
                to_logits.add(K.softcap, grid, lc.elem_threads, (logits, f32(p.final_softcap)))
        return dec.Group(arena, x, qpos, body, to_hidden, to_logits, logits)
