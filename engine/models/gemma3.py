"""Gemma 3 (text), a port of llama.cpp's graph (src/models/gemma3.cpp, iSWA variant).

Per layer, with ``x`` the residual stream:

    h   = rmsnorm(x) * attn_norm
    q, k, v = h @ Wq, h @ Wk, h @ Wv              (per head: q, k RMS-normed, then RoPE NEOX)
    q  *= 1/sqrt(head_dim)                         (query_pre_attn_scalar as llama.cpp sets it)
    a   = attention(q, k, v) @ Wo                  (5 of 6 layers: sliding window, local rope base)
    x   = x + rmsnorm(a) * post_attention_norm
    f   = (gelu_tanh(h2 @ Wgate) * (h2 @ Wup)) @ Wdown,   h2 = rmsnorm(x) * ffn_norm
    x   = x + rmsnorm(f) * post_ffw_norm

The input is the token embedding scaled by sqrt(n_embd); the output is rmsnorm(x) * output_norm
times the tied token embedding (Q8_0 in the default model).  Norm weights in GGUF already carry
Gemma's ``1 +``.  Layer ``il`` uses the sliding window when ``il % 6 < 5`` (llama.cpp's
``set_swa_pattern(6)``): local layers rope base 10000, global layers ``rope.freq_base``.

Weights stay quantized (repacked once, same bits); activations are quantized per block as
llama.cpp does, so logits agree with llama.cpp's CPU backend to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.errors import ModelError
from engine.gguf import GGUFModel
from engine.models._common import load_qweight, widen_q5_0_in
from engine.models.base import CausalLM
from engine.runtime.kernels import (
    QWeight,
    SharedActivations,
    attention,
    attention_kt,
    fused,
    geglu,
    geglu_lut_inplace,
    matmul_dense,
    matvec,
    rmsnorm,
    rope_neox,
    scale_round,
)
from engine.runtime.kernels.qgemm import qgemm
from engine.runtime.kv_cache import layer_slots, ring_keeps

ARCH = "gemma3"
SWA_PATTERN = 6
ROPE_BASE_LOCAL = 10000.0
LAYER_INT_MAX_TOKENS = 1 << 30  # layer weights: integer kernels up to this many tokens (see _mm)
MAX_BATCH = 512  # tokens per internal micro-batch (sizes the sliding-window ring buffers)


@dataclass(frozen=True)
class Gemma3Params:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    eps: float
    rope_base: float
    rope_base_local: float
    rope_freq_scale: float
    sliding_window: int
    attn_scale: float
    final_softcap: float

    @classmethod
    def from_gguf(cls, model: GGUFModel) -> Gemma3Params:
        arch = model.get("general.architecture")
        if arch != ARCH:
            raise ModelError(f"{model.path.name}: architecture is {arch!r}, not {ARCH!r}")

        def key(name: str, default=None):
            v = model.get(f"{ARCH}.{name}", default)
            if v is None:
                raise ModelError(f"{model.path.name}: metadata key {ARCH}.{name} is missing")
            return v

        n_embd = int(key("embedding_length"))
        n_head = int(key("attention.head_count"))
        head_dim = int(key("attention.key_length", n_embd // n_head))
        scaling = model.get(f"{ARCH}.rope.scaling.type", "none")
        factor = float(model.get(f"{ARCH}.rope.scaling.factor", 1.0) or 1.0)
        n_layer = int(key("block_count"))
        emb = model.tensor("token_embd.weight")
        # llama.cpp: the 27B model scales queries by 1/sqrt(n_embd / n_head), others by 1/sqrt(head_dim)
        attn_scale = 1.0 / math.sqrt(n_embd / n_head if n_layer == 62 else head_dim)
        return cls(
            n_vocab=int(emb.shape[0]),
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=int(key("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_ff=int(key("feed_forward_length")),
            eps=float(key("attention.layer_norm_rms_epsilon")),
            rope_base=float(key("rope.freq_base", 10000.0)),
            rope_base_local=ROPE_BASE_LOCAL,
            rope_freq_scale=1.0 / factor if scaling == "linear" else 1.0,
            sliding_window=int(model.get(f"{ARCH}.attention.sliding_window", 0) or 0),
            attn_scale=attn_scale,
            final_softcap=float(model.get(f"{ARCH}.final_logit_softcapping", 0.0) or 0.0),
        )

    def is_swa(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer % SWA_PATTERN < SWA_PATTERN - 1

    def window(self, layer: int) -> int:
        return self.sliding_window if self.is_swa(layer) else 0

    def rope(self, layer: int) -> tuple[float, float]:
        """(freq_base, freq_scale) of a layer."""
        if self.is_swa(layer):
            return self.rope_base_local, 1.0
        return self.rope_base, self.rope_freq_scale


@dataclass(frozen=True, eq=False)
class Gemma3Layer:
    attn_norm: np.ndarray
    wq: QWeight
    wk: QWeight
    wv: QWeight
    q_norm: np.ndarray
    k_norm: np.ndarray
    wo: QWeight
    post_attn_norm: np.ndarray
    ffn_norm: np.ndarray
    w_gate: QWeight
    w_up: QWeight
    w_down: QWeight
    post_ffw_norm: np.ndarray


def _norm(model: GGUFModel, name: str, n: int) -> np.ndarray:
    a = np.array(model.array(name), np.float32)
    if a.shape != (n,):
        raise ModelError(f"{model.path.name}: {name} has shape {a.shape}, expected ({n},)")
    return a


def _mm(w: QWeight, x: np.ndarray | SharedActivations, limit: int | None = None) -> np.ndarray:
    """One token: the mat-vec kernels; several (prefill): the token-tiled kernels (bit-identical).
    ``x`` may be :class:`SharedActivations` (converted once for the weights reading the same input)."""
    acts = x if isinstance(x, SharedActivations) else SharedActivations(x)
    act, x = acts.for_weight(w), acts.x
    limit = LAYER_INT_MAX_TOKENS if limit is None else limit
    if x.shape[0] > limit:
        return matmul_dense(w, x, act=act)
    return matvec(w, x, act=act) if x.shape[0] == 1 else qgemm(w, x, act=act)


class Gemma3(CausalLM):
    """A Gemma 3 model over quantized GGUF weights with its own KV cache."""

    def __init__(
        self,
        params: Gemma3Params,
        layers: list[Gemma3Layer],
        tok_embd: QWeight,
        output_norm: np.ndarray,
        n_ctx: int,
        kv_type: str = "f16",
    ) -> None:
        self._setup(params, layers, tok_embd, output_norm, n_ctx, kv_type, MAX_BATCH)
        self.fp16_gelu = True
        self._gelu_table: np.ndarray | None = None  # ggml's fp16 GELU table, built on first use

    def _windows(self, n_layers: int) -> list[int]:
        return [self.params.window(i) for i in range(n_layers)]

    def _gpu_layers(self, first: int, arenas: list, output: bool):
        from engine.runtime.cuda.gemma3 import Gemma3Gpu

        return Gemma3Gpu(self, first, arenas, output)

    @classmethod
    def from_gguf(cls, model: GGUFModel, n_ctx: int = 4096, kv_type: str = "f16") -> Gemma3:
        if n_ctx < 1:
            raise ModelError(f"n_ctx must be at least 1, not {n_ctx}")
        p = Gemma3Params.from_gguf(model)
        widen = widen_q5_0_in(model)
        layers = []
        for i in range(p.n_layer):

            def w(name: str, i: int = i) -> QWeight:
                return load_qweight(model, f"blk.{i}.{name}.weight", widen)

            def nrm(name: str, n: int, i: int = i) -> np.ndarray:
                return _norm(model, f"blk.{i}.{name}.weight", n)

            layers.append(
                Gemma3Layer(
                    attn_norm=nrm("attn_norm", p.n_embd),
                    wq=w("attn_q"),
                    wk=w("attn_k"),
                    wv=w("attn_v"),
                    q_norm=nrm("attn_q_norm", p.head_dim),
                    k_norm=nrm("attn_k_norm", p.head_dim),
                    wo=w("attn_output"),
                    post_attn_norm=nrm("post_attention_norm", p.n_embd),
                    ffn_norm=nrm("ffn_norm", p.n_embd),
                    w_gate=w("ffn_gate"),
                    w_up=w("ffn_up"),
                    w_down=w("ffn_down"),
                    post_ffw_norm=nrm("post_ffw_norm", p.n_embd),
                )
            )
        out_name = "output.weight" if model.has_tensor("output.weight") else "token_embd.weight"
        tok = load_qweight(model, "token_embd.weight", widen)
        if out_name != "token_embd.weight":
            raise ModelError(f"{model.path.name}: an untied output.weight is not supported for {ARCH} yet")
        return cls(p, layers, tok, _norm(model, "output_norm.weight", p.n_embd), n_ctx, kv_type)

    # ------------------------------------------------------------------ public API

    def can_rewind(self, start_pos: int) -> bool:
        """Whether :meth:`forward` may restart at ``start_pos``: every sliding-window layer's ring
        (CPU or GPU, sized alike) still holds the keys the restarted tokens see."""
        p, n_past, mb = self.params, self.cache.n_past, self.cache.max_batch
        if start_pos >= n_past:
            return True  # appending: every ring holds at least a window
        return all(
            ring_keeps(self.n_ctx, p.window(il), layer_slots(self.n_ctx, p.window(il), mb), start_pos, n_past)
            for il in range(p.n_layer)
        )

    # ------------------------------------------------------------------ the graph

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return super().embed(tokens) * np.float32(math.sqrt(self.params.n_embd))

    def _forward_batch(self, tokens: np.ndarray, pos0: int, skip_logits: bool, last_only: bool, top_k: int):
        p = self.params
        n = tokens.size
        eps = np.float32(p.eps)
        if n == 1 and self.observer is None:
            return self._decode_token(int(tokens[0]), pos0, skip_logits, top_k)
        positions = np.arange(pos0, pos0 + n, dtype=np.int64)
        x = self.embed(tokens)
        for il, L in enumerate(self.layers):
            h = rmsnorm(x, L.attn_norm, eps)
            if self.observer is not None:
                for t in ("attn_q", "attn_k", "attn_v"):
                    self._see(f"blk.{il}.{t}.weight", h)
            hs = SharedActivations(h)
            q = _mm(L.wq, hs).reshape(n, p.n_head, p.head_dim)
            k = _mm(L.wk, hs).reshape(n, p.n_head_kv, p.head_dim)
            v = _mm(L.wv, hs).reshape(n, p.n_head_kv, p.head_dim)
            q = rmsnorm(q.reshape(-1, p.head_dim), L.q_norm, eps).reshape(q.shape)
            k = rmsnorm(k.reshape(-1, p.head_dim), L.k_norm, eps).reshape(k.shape)
            base, fscale = p.rope(il)
            rope_neox(q, positions, base, fscale)
            rope_neox(k, positions, base, fscale)
            # llama.cpp: ggml_scale(Q), then Q converted to f16 for K·Q with an f16 K
            scale_round(q, np.float32(p.attn_scale), self.cache.round_f16)
            self.cache.write(il, pos0, k, v)
            a = self._attend(il, q, positions, pos0 + n)
            a = a.reshape(n, p.n_head * p.head_dim)
            self._see(f"blk.{il}.attn_output.weight", a)
            a = _mm(L.wo, a)
            if last_only and il == p.n_layer - 1:
                a, x = a[-1:], x[-1:]
            x = x + rmsnorm(a, L.post_attn_norm, eps)
            del q, k, v, a, hs  # not needed by the FFN: a lower prefill peak
            h = rmsnorm(x, L.ffn_norm, eps)
            if self.observer is not None:
                self._see(f"blk.{il}.ffn_gate.weight", h)
                self._see(f"blk.{il}.ffn_up.weight", h)
            hs = SharedActivations(h)
            f = self._geglu(_mm(L.w_gate, hs), _mm(L.w_up, hs))
            self._see(f"blk.{il}.ffn_down.weight", f)
            del hs
            f = _mm(L.w_down, f)
            x = x + rmsnorm(f, L.post_ffw_norm, eps)
            del f, h
        self.cache.n_past = pos0 + n
        return self._head(x, pos0, skip_logits, last_only, top_k)

    def _geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        if not self.fp16_gelu:
            return geglu(gate, up, False)
        return geglu_lut_inplace(gate, up, self.gelu_table())  # up is this call's own array

    def gelu_table(self) -> np.ndarray:
        """ggml's fp16 GELU table (built on first use, 65,536 f32)."""
        if self._gelu_table is None:
            self._gelu_table = fused.gelu_f16_table()
        return self._gelu_table

    def _attend(self, il: int, q: np.ndarray, positions: np.ndarray, end_pos: int) -> np.ndarray:
        """Attention of the batch's queries over layer ``il``'s cache (written up to ``end_pos``)."""
        cache = self.cache
        window, round_f16 = self.params.window(il), cache.round_f16
        if cache.kt is not None:  # transposed keys: vectorized across slots, bit-identical
            ns = min(cache.slots[il], end_pos)
            return attention_kt(
                q, cache.kt[il], cache.v[il], cache.slot_pos[il], ns, positions, window, round_f16, 1.0
            )
        kc, vc, sp = cache.view(il, end_pos)
        return attention(q, kc, vc, sp, positions, window, round_f16)

    def _head(self, x: np.ndarray, pos0: int, skip_logits: bool, last_only: bool, top_k: int = 0):
        """GPU layers (if any), then the output norm and logits of the residual stream ``x``."""
        p = self.params
        if self.gpu is not None:
            x, done = self.gpu.forward(x, pos0, last_only, not skip_logits, self.observer, top_k)
            if done:
                return x
        if skip_logits:
            return None
        if last_only:
            x = x[-1:]
        if x.shape[0] == 1 and self.observer is None:
            d = self._dec or self._build_decode()
            logits = np.empty((1, p.n_vocab), np.float32)
            fused.rms_act(x[0], self.output_norm, np.float32(p.eps), *d.out_args)
            fn, args = fused.matvec_call(self.tok_embd, d.out_buf, logits)
            fn(*args)
        else:
            x = rmsnorm(x, self.output_norm, np.float32(p.eps))
            self._see("token_embd.weight", x)  # tied output
            logits = _mm(self.tok_embd, x)  # llama.cpp's Q8_0 arithmetic (and faster than BLAS)
        if p.final_softcap > 0:
            c = np.float32(p.final_softcap)
            logits = np.tanh(logits / c) * c
        return logits

    # ------------------------------------------------------------------ single-token decode

    def _build_decode(self) -> _Decode:
        self._dec = _Decode(self)
        return self._dec

    def _decode_token(self, token: int, pos: int, skip_logits: bool, top_k: int = 0):
        """One token through the CPU layers with the fused kernels and preallocated buffers (same
        numbers, bit for bit, as the batched graph above)."""
        d = self._dec or self._build_decode()
        p = self.params
        eps = np.float32(p.eps)
        cache = self.cache
        x = d.x
        if d.embed is not None:
            fused.embed_q8_0(*d.embed, token, d.emb_scale, x[0])
        else:
            x[:] = self.embed(np.array([token], np.int64))
        xv = x[0]
        round_f16 = cache.round_f16
        n_layers = len(self.layers)
        for il, L in enumerate(self.layers):
            ld = d.layers[il]
            if il == 0:
                fused.rms_act(xv, L.attn_norm, eps, *d.in_args)
            for fn, args in ld.qkv:
                fn(*args)
            slot = pos % cache.slots[il]
            fused.qk_rope_cache(*ld.rope_args, pos, *ld.rope_args2, cache.slot_pos[il], slot)
            ns = min(cache.slots[il], pos + 1)
            fused.attend_one(
                d.q3,
                ld.kt,
                ld.vc,
                ld.slot_pos,
                ns,
                pos,
                ld.window,
                round_f16,
                1.0,  # Q is scaled already (llama.cpp's Gemma 3 graph: kq_scale 1)
                d.scores,
                d.attn_buf.h,
            )
            fused.act(d.attn_buf.h, *d.attn_args)
            ld.wo[0](*ld.wo[1])
            fused.add_rms_act(xv, d.o_out[0], L.post_attn_norm, True, eps, L.ffn_norm, *d.in_args)
            for fn, args in ld.gate_up:
                fn(*args)
            fused.geglu_act(d.g_out[0], d.u_out[0], self.fp16_gelu, d.gelu, *d.ff_args)
            ld.down[0](*ld.down[1])
            if il + 1 < n_layers:
                nxt = self.layers[il + 1].attn_norm
                fused.add_rms_act(xv, d.o_out[0], L.post_ffw_norm, True, eps, nxt, *d.in_args)
            else:
                fused.add_rms(xv, d.o_out[0], L.post_ffw_norm, eps)
        cache.n_past = pos + 1
        return self._head(x if self.gpu is None else x.copy(), pos, skip_logits, False, top_k)


class _Decode:
    """Per-model single-token state: activation buffers, mat-vec outputs, and each layer's kernel
    calls with their arguments bound (built once; rebuilt when the layers or the cache change)."""

    def __init__(self, m: Gemma3) -> None:
        p = m.params
        cache = m.cache
        f32 = np.float32
        self.x = np.zeros((1, p.n_embd), f32)
        self.in_buf = fused.ActBuffers(p.n_embd)  # input of q/k/v and of gate/up
        self.attn_buf = fused.ActBuffers(p.n_head * p.head_dim)  # input of wo
        self.ff_buf = fused.ActBuffers(p.n_ff)  # input of down
        self.out_buf = fused.ActBuffers(p.n_embd)  # input of the output matrix
        self.q_out = np.zeros((1, p.n_head * p.head_dim), f32)
        self.k_out = np.zeros((1, p.n_head_kv * p.head_dim), f32)
        self.v_out = np.zeros((1, p.n_head_kv * p.head_dim), f32)
        self.o_out = np.zeros((1, p.n_embd), f32)  # wo and down outputs
        self.g_out = np.zeros((1, p.n_ff), f32)
        self.u_out = np.zeros((1, p.n_ff), f32)
        self.q3 = np.zeros((p.n_head, p.head_dim), f32)
        widths = [kt.shape[2] for kt in cache.kt] if cache.kt else [1]
        self.scores = np.zeros((p.n_head, max(widths)), f32)
        tok = m.tok_embd
        self.embed = (tok.fields[0], tok.fields[1]) if tok.qtype == "Q8_0" else None
        self.emb_scale = f32(math.sqrt(p.n_embd))
        self.gelu = m.gelu_table()
        no_kt = np.zeros((1, 1, 1), f32)
        if cache.kt is None and m.layers:  # attend_one reads the transposed keys
            raise ModelError("Gemma 3's one-token path needs a KV cache that keeps transposed keys")
        self.layers = []
        for il, L in enumerate(m.layers):
            ld = _DecodeLayer()
            ld.qkv = [
                fused.matvec_call(L.wq, self.in_buf, self.q_out),
                fused.matvec_call(L.wk, self.in_buf, self.k_out),
                fused.matvec_call(L.wv, self.in_buf, self.v_out),
            ]
            ld.gate_up = [
                fused.matvec_call(L.w_gate, self.in_buf, self.g_out),
                fused.matvec_call(L.w_up, self.in_buf, self.u_out),
            ]
            ld.wo = fused.matvec_call(L.wo, self.attn_buf, self.o_out)
            ld.down = fused.matvec_call(L.w_down, self.ff_buf, self.o_out)
            base, fscale = p.rope(il)
            kt = cache.kt[il]
            ld.rope_args = (
                self.q_out[0],
                self.k_out[0],
                self.v_out[0],
                L.q_norm,
                L.k_norm,
                True,
                np.float32(p.eps),
            )
            ld.rope_args2 = (
                p.head_dim,
                float(base),
                float(fscale),
                no_kt[0, 0],
                1.0,
                True,
                True,
                np.float32(p.attn_scale),
                True,
                cache.round_f16,
                self.q3,
                cache.k[il],
                cache.v[il],
                kt,
                True,
            )
            ld.kt, ld.vc, ld.slot_pos = kt, cache.v[il], cache.slot_pos[il]
            ld.window = p.window(il)
            self.layers.append(ld)
        fused.matvec_call(m.tok_embd, self.out_buf, np.zeros((1, 1), f32))  # sets out_buf's flags
        self.in_args = (self.in_buf.h, *self.in_buf.outs())
        self.attn_args = self.attn_buf.outs()
        self.ff_args = (self.ff_buf.h, *self.ff_buf.outs())
        self.out_args = (self.out_buf.h, *self.out_buf.outs())


class _DecodeLayer:
    qkv: list
    gate_up: list
    wo: tuple
    down: tuple
    rope_args: tuple
    rope_args2: tuple
    kt: np.ndarray
    vc: np.ndarray
    slot_pos: np.ndarray
    window: int
