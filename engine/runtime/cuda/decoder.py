"""llama-family layers on the GPU (llama, qwen2, qwen3, phi3): the last layers of an
:class:`engine.models._common.Decoder` (and, when all of them are there, the output layer), their
weights uploaded once as quantized blocks, their KV cache on the device in fp16.  Per forward only
activations move: the hidden state of the batch goes up after the CPU layers (and between GPUs),
and the logits (or the hidden state) come back.

The graph is the CPU one, op for op (see engine/models/_common.py): RMSNorm, q/k/v projections
(separate or one fused q‖k‖v, optional biases), qwen3's per-head q/k RMSNorm, RoPE in the model's
mode with its frequency factors and attention factor, the query scale and fp16 rounding in the
architecture's order, GQA attention over the device cache, the output projection (+ optional bias),
residual adds, SwiGLU (separate or fused gate‖up) and the output norm and matrix.  Kernels:
:mod:`.kernels` and the element-wise :mod:`.ops_kernels`.  One token at a time (decode, no
observer), it runs as programs built at load time (:mod:`.decode`) with the kernels of
:mod:`.fused_kernels`, as Gemma 3's (:mod:`.gemma3`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.runtime.cuda import decode as dec
from engine.runtime.cuda import device as D
from engine.runtime.cuda import fused_kernels as FK
from engine.runtime.cuda import kernels as K
from engine.runtime.cuda import ops_kernels as O
from engine.runtime.cuda.layers import GpuLayers


@dataclass(eq=False)
class _DeviceLayer:
    il: int
    arena: D.DeviceArena
    attn_norm: Any
    wq: D.DeviceQWeight | None  # None: wqkv (fused)
    wk: D.DeviceQWeight | None
    wv: D.DeviceQWeight | None
    wqkv: D.DeviceQWeight | None
    bq: Any
    bk: Any
    bv: Any
    q_norm: Any
    k_norm: Any
    wo: D.DeviceQWeight
    bo: Any
    ffn_norm: Any
    w_gate: D.DeviceQWeight | None  # None: w_up is fused (gate rows first, then up)
    w_up: D.DeviceQWeight
    w_down: D.DeviceQWeight
    freq_factors: Any
    kc: Any
    vc: Any
    slot_pos: Any
    qkv: dec.Stacks  # the q, k, v projections as one stack per weight type (wqkv: one)
    qkv_bias: Any  # bq‖bk‖bv laid out like the stacks' output, or None
    ffn: dec.Stacks  # gate and up likewise


class DecoderGpu(GpuLayers):
    """Layers ``first_layer .. n_layer-1`` of ``model`` on the GPUs of ``arenas`` (one arena per
    GPU layer, consecutive layers on the same device), plus the output layer if ``output``."""

    def __init__(self, model: Any, first_layer: int, arenas: list[D.DeviceArena], output: bool) -> None:
        if not model.cache.round_f16:
            raise D.NoGpuKernel("the GPU KV cache holds f16 only (this model's cache is f32)")
        self.params = model.params
        self.first_layer = first_layer
        self.n_ctx = model.n_ctx
        self.scale_q = model.SCALE_Q
        self.output_name = model.output_name
        self.layers: list[_DeviceLayer] = []
        self.arenas = list(dict.fromkeys(arenas))
        self.output: tuple[D.DeviceQWeight, Any] | None = None
        self.n_past = 0
        self.decode: list[dec.Group] = []  # per device: the one-token programs (decode.py)
        try:
            self._upload(model, arenas, output)
        except D.GpuOutOfMemory as err:
            err.loaded_layers = len(self.layers)
            self.close()
            raise

    def _upload(self, model: Any, arenas: list[D.DeviceArena], output: bool) -> None:
        p = self.params
        shape = (self.n_ctx, p.n_head_kv, p.head_dim)
        for il, arena in zip(range(self.first_layer, p.n_layer), arenas, strict=True):
            L = model.layers[il]
            with arena.on(), arena.loading(f"layer {il}"):

                def up(a, arena=arena):
                    return None if a is None else arena.upload(np.asarray(a, np.float32))

                def qw(w, arena=arena):
                    return None if w is None else D.DeviceQWeight.upload(arena, w)

                if L.wqkv is None:
                    attn, qkv = D.upload_stacked(arena, [("q", L.wq), ("k", L.wk), ("v", L.wv)])
                    wqkv = None
                else:
                    attn, wqkv = {}, qw(L.wqkv)
                    qkv = [(wqkv, [("q", 0), ("k", p.n_q), ("v", p.n_q + p.n_kv)])]
                if L.w_gate is None:
                    ffn, w_up = {}, qw(L.w_up)
                    ffn_stacks = [(w_up, [("gate", 0), ("up", p.n_ff)])]
                else:
                    ffn, ffn_stacks = D.upload_stacked(arena, [("gate", L.w_gate), ("up", L.w_up)])
                    w_up = ffn["up"]
                self.layers.append(
                    _DeviceLayer(
                        il=il,
                        arena=arena,
                        attn_norm=up(L.attn_norm),
                        wq=attn.get("q"),
                        wk=attn.get("k"),
                        wv=attn.get("v"),
                        wqkv=wqkv,
                        bq=up(L.bq),
                        bk=up(L.bk),
                        bv=up(L.bv),
                        q_norm=up(L.q_norm),
                        k_norm=up(L.k_norm),
                        wo=qw(L.wo),
                        bo=up(L.bo),
                        ffn_norm=up(L.ffn_norm),
                        w_gate=ffn.get("gate"),
                        w_up=w_up,
                        w_down=qw(L.w_down),
                        freq_factors=up(model.freq_factors),
                        kc=arena.empty(shape, np.uint16),
                        vc=arena.empty(shape, np.uint16),
                        slot_pos=arena.upload(np.full(self.n_ctx, -1, np.int64)),
                        qkv=qkv,
                        qkv_bias=up(self._flat_bias(qkv, L)),
                        ffn=ffn_stacks,
                    )
                )
        if output:
            if not arenas:
                raise ValueError("the output layer goes on the GPU of the last layer")
            arena = arenas[-1]
            with arena.on(), arena.loading("the output layer"):
                w_out = model.tok_embd if model.output is None else model.output
                self.output = (D.DeviceQWeight.upload(arena, w_out), arena.upload(model.output_norm))
        self.decode = [self._decode_group(arena, layers) for arena, layers in dec.groups(self.layers)]

    def _flat_bias(self, qkv: dec.Stacks, L: Any) -> np.ndarray | None:
        """The q, k, v biases where the stacks put their outputs (zeros for a missing one)."""
        if L.bq is None and L.bk is None and L.bv is None:
            return None
        p = self.params
        _, off = dec.stack_offsets(qkv)
        flat = np.zeros(p.n_q + 2 * p.n_kv, np.float32)
        for name, b in (("q", L.bq), ("k", L.bk), ("v", L.bv)):
            if b is not None:
                flat[off[name] : off[name] + len(b)] = b
        return flat

    # ------------------------------------------------------------------ the graph (forward: GpuLayers)

    def _layer(self, L: _DeviceLayer, x, positions, pos0: int, last_only: bool, see):
        p = self.params
        lc = L.arena.launch
        n = x.shape[0]
        eps = np.float32(p.eps)

        def look(name: str, a) -> None:
            if see is not None:
                see(f"blk.{L.il}.{name}.weight", a.copy_to_host())

        h = D.rmsnorm(lc, x, L.attn_norm, eps)
        q, k, v = self._qkv(L, h, look)
        if L.q_norm is not None:
            q = D.rmsnorm(lc, q.reshape(n * p.n_head, p.head_dim), L.q_norm, eps)
            k = D.rmsnorm(lc, k.reshape(n * p.n_head_kv, p.head_dim), L.k_norm, eps)
        q = q.reshape(n, p.n_head, p.head_dim)
        k = k.reshape(n, p.n_head_kv, p.head_dim)
        v = v.reshape(n, p.n_head_kv, p.head_dim)
        rope = (p.n_rot, p.rope_base, p.rope_freq_scale, L.freq_factors, p.rope_attn_factor, p.rope_neox)
        O.run_rope(lc, q, positions, *rope)
        O.run_rope(lc, k, positions, *rope)
        O.run_scale_round(lc, q.reshape(n * p.n_head, p.head_dim), p.attn_scale, self.scale_q, True)
        total = n * p.n_head_kv * p.head_dim
        K.kv_write[D._blocks(total, lc.elem_threads, lc), lc.elem_threads](k, v, L.kc, L.vc, L.slot_pos, pos0)
        ns = min(L.kc.shape[0], pos0 + n)
        a = D.attention(lc, q, L.kc, L.vc, L.slot_pos, ns, positions, 0, True)
        a = a.reshape(n, p.n_q)
        look("attn_output", a)
        a = D.matmul(lc, L.wo, D.quantize(lc, L.wo.act_type, a))
        if L.bo is not None:
            O.run_take_cols(lc, a, 0, p.n_embd, L.bo, out=a)
        if last_only and L.il == p.n_layer - 1:
            a, x = a[n - 1 :], x[n - 1 :]
        x = O.run_add(lc, a, x)
        h = D.rmsnorm(lc, x, L.ffn_norm, eps)
        f = self._ffn(L, h, look)
        look("ffn_down", f)
        f = D.matmul(lc, L.w_down, D.quantize(lc, L.w_down.act_type, f))
        return O.run_add(lc, f, x, out=f)

    def _qkv(self, L: _DeviceLayer, h, look):
        """q (n, n_q), k, v (n, n_kv) as contiguous device arrays, biases added."""
        p = self.params
        lc = L.arena.launch
        if L.wqkv is not None:
            look("attn_qkv", h)
            qkv = D.matmul(lc, L.wqkv, D.quantize(lc, L.wqkv.act_type, h))
            q = O.run_take_cols(lc, qkv, 0, p.n_q, L.bq)
            k = O.run_take_cols(lc, qkv, p.n_q, p.n_kv, L.bk)
            v = O.run_take_cols(lc, qkv, p.n_q + p.n_kv, p.n_kv, L.bv)
            return q, k, v
        for name in ("attn_q", "attn_k", "attn_v"):
            look(name, h)
        acts: dict[str, Any] = {}
        out = []
        for w, b in ((L.wq, L.bq), (L.wk, L.bk), (L.wv, L.bv)):
            if w.act_type not in acts:
                acts[w.act_type] = D.quantize(lc, w.act_type, h)
            y = D.matmul(lc, w, acts[w.act_type])
            if b is not None:
                O.run_take_cols(lc, y, 0, w.rows, b, out=y)
            out.append(y)
        return tuple(out)

    def _ffn(self, L: _DeviceLayer, h, look):
        """silu(h @ Wgate) * (h @ Wup), from separate or fused (gate‖up) weights."""
        p = self.params
        lc = L.arena.launch
        if L.w_gate is None:
            look("ffn_up", h)
            gu = D.matmul(lc, L.w_up, D.quantize(lc, L.w_up.act_type, h))
            return O.run_swiglu(lc, gu[:, : p.n_ff], gu[:, p.n_ff :])
        look("ffn_gate", h)
        look("ffn_up", h)
        act = D.quantize(lc, L.w_gate.act_type, h)
        up_act = act if L.w_up.act_type == L.w_gate.act_type else D.quantize(lc, L.w_up.act_type, h)
        return O.run_swiglu(lc, D.matmul(lc, L.w_gate, act), D.matmul(lc, L.w_up, up_act))

    def _decode_group(self, arena: D.DeviceArena, layers: list[_DeviceLayer]) -> dec.Group:
        """Buffers and launches of one token through ``layers`` (all on ``arena``): the graph of
        :meth:`_layer` with fused kernels; the end of a layer (residual add) and the next layer's
        attention norm and quantization are one launch."""
        p = self.params
        out = self.output if layers[-1] is self.layers[-1] else None
        f32 = np.float32
        attn_t = [[s.act_type for s, _ in L.qkv] for L in layers]
        ffn_t = [[s.act_type for s, _ in L.ffn] for L in layers]
        out_t = [out[0].act_type] if out else []
        with arena.on(), arena.loading("decode buffers"):
            E = arena.empty
            x, a = E((1, p.n_embd), f32), E((1, p.n_embd), f32)
            h = dec.Codes(arena, E((1, p.n_embd), f32), [t for ts in (*attn_t, *ffn_t, out_t) for t in ts])
            qkv = E((p.n_q + 2 * p.n_kv,), f32)
            q, att = E((1, p.n_head, p.head_dim), f32), E((1, p.n_head, p.head_dim), f32)
            ac = dec.Codes(arena, att.reshape(1, p.n_q), [L.wo.act_type for L in layers])
            gu = E((2 * p.n_ff,), f32)
            fc = dec.Codes(arena, E((1, p.n_ff), f32), [L.w_down.act_type for L in layers])
            qpos = E((1,), np.int64)
            scores = E((p.n_head, self.n_ctx), f32)
            none = E((0,), f32)
            logits = E((1, p.n_vocab), f32) if out else None
        lc = arena.launch
        eps = f32(p.eps)
        rope = (p.n_rot, D._theta_scale(f32(p.rope_base), p.n_rot), f32(p.rope_freq_scale))
        body = dec.Program(arena)
        dec.add_residual(body, FK.NO_RESIDUAL, x, none, none, x, layers[0].attn_norm, eps, h, attn_t[0])
        for i, L in enumerate(layers):
            off = dec.add_stack_matmuls(body, L.qkv, h, qkv)
            norms = (none, none) if L.q_norm is None else (L.q_norm, L.k_norm)
            bias = none if L.qkv_bias is None else L.qkv_bias
            head = (qkv, off["q"], off["k"], off["v"], bias, *norms, eps)
            tail = (*rope, L.freq_factors, f32(p.rope_attn_factor), bool(p.rope_neox), f32(p.attn_scale))
            tail += (bool(self.scale_q), q, L.kc, L.vc, L.slot_pos, qpos)
            heads = D._blocks(p.n_head + p.n_head_kv, 1, lc)
            body.add(FK.ext_qk_rope_kv, heads, lc.row_threads, (*head, *tail))
            cache = (L.kc, L.vc, L.slot_pos, qpos)
            dec.add_attention(body, q, cache, 0, True, scores, ac, [L.wo.act_type])
            body.add_call(D.matmul_call(lc, L.wo, ac.acts[L.wo.act_type], a))
            bo = none if L.bo is None else L.bo
            dec.add_residual(body, FK.ADD, a, bo, none, x, L.ffn_norm, eps, h, ffn_t[i])
            off = dec.add_stack_matmuls(body, L.ffn, h, gu)
            dec.add_glu(body, gu, off["gate"], off["up"], FK.SILU, fc, [L.w_down.act_type])
            body.add_call(D.matmul_call(lc, L.w_down, fc.acts[L.w_down.act_type], a))
            if i + 1 < len(layers):
                nxt = layers[i + 1].attn_norm
                dec.add_residual(body, FK.ADD, a, none, none, x, nxt, eps, h, attn_t[i + 1])
        to_hidden = dec.Program(arena)
        dec.add_residual(to_hidden, FK.ADD, a, none, none, x, none, eps, h, [])
        to_logits = None
        if out is not None:
            w_out, norm = out
            to_logits = dec.Program(arena)
            dec.add_residual(to_logits, FK.ADD, a, none, none, x, norm, eps, h, out_t)
            to_logits.add_call(D.matmul_call(lc, w_out, h.acts[w_out.act_type], logits))
        return dec.Group(arena, x, qpos, body, to_hidden, to_logits, logits)
