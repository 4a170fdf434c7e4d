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
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.errors import ModelError
from engine.gguf import GGUFModel
from engine.runtime.kernels import (
    QWeight,
    attention,
    attention_ref,
    dequantize_rows,
    geglu,
    matmul_dense,
    matvec,
    repack,
    rmsnorm,
    rope_neox,
)
from engine.runtime.kernels.qgemm import qgemm
from engine.runtime.kv_cache import KVCache

ARCH = "gemma3"
SWA_PATTERN = 6
ROPE_BASE_LOCAL = 10000.0
DECODE_MAX_TOKENS = 4  # up to this many tokens: integer mat-vec kernels; more: dequantize + BLAS
LAYER_INT_MAX_TOKENS = 1 << 30  # layer weights: integer kernels up to this many tokens (see _mm)
NUMBA_ATTN_MAX_TOKENS = 1 << 30  # Numba attention kernel up to this many queries, NumPy/BLAS beyond
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


def _weight(model: GGUFModel, name: str) -> QWeight:
    t = model.tensor(name)
    rows, cols = t.shape
    return repack(model.raw(name), t.type, rows, cols)


def _norm(model: GGUFModel, name: str, n: int) -> np.ndarray:
    a = np.array(model.array(name), np.float32)
    if a.shape != (n,):
        raise ModelError(f"{model.path.name}: {name} has shape {a.shape}, expected ({n},)")
    return a


def _mm(w: QWeight, x: np.ndarray, limit: int | None = None) -> np.ndarray:
    """One token: the mat-vec kernels; several (prefill): the token-tiled kernels (bit-identical)."""
    limit = LAYER_INT_MAX_TOKENS if limit is None else limit
    if x.shape[0] > limit:
        return matmul_dense(w, x)
    return matvec(w, x) if x.shape[0] == 1 else qgemm(w, x)


class Gemma3:
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
        self.params = params
        self.layers = layers
        self.tok_embd = tok_embd
        self.output_norm = output_norm
        self.n_ctx = n_ctx
        self.cache = KVCache(
            n_ctx,
            params.n_head_kv,
            params.head_dim,
            [params.window(i) for i in range(params.n_layer)],
            max_batch=min(MAX_BATCH, n_ctx),
            dtype=kv_type,
        )
        self.fp16_gelu = True
        # Called as observer(weight_name, x) with the activations ``x`` (n_tokens, n_in) f32 that
        # enter each weight's mat-mul, e.g. ("blk.3.ffn_down.weight", f): what an imatrix needs.
        self.observer: Callable[[str, np.ndarray], None] | None = None
        self._lock = threading.Lock()  # serializes Numba parallel launches from several threads
        self.gpu = None  # engine.runtime.cuda.gemma3.Gemma3Gpu: the last layers, on GPUs

    @classmethod
    def from_gguf(cls, model: GGUFModel, n_ctx: int = 4096, kv_type: str = "f16") -> Gemma3:
        if n_ctx < 1:
            raise ModelError(f"n_ctx must be at least 1, not {n_ctx}")
        p = Gemma3Params.from_gguf(model)
        layers = []
        for i in range(p.n_layer):

            def w(name: str, i: int = i) -> QWeight:
                return _weight(model, f"blk.{i}.{name}.weight")

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
        tok = _weight(model, "token_embd.weight")
        if out_name != "token_embd.weight":
            raise ModelError(f"{model.path.name}: an untied output.weight is not supported for {ARCH} yet")
        return cls(p, layers, tok, _norm(model, "output_norm.weight", p.n_embd), n_ctx, kv_type)

    # ------------------------------------------------------------------ public API

    @property
    def n_vocab(self) -> int:
        return self.params.n_vocab

    @property
    def n_past(self) -> int:
        return self.cache.n_past

    def reset(self) -> None:
        with self._lock:
            self.cache.reset()
            if self.gpu is not None:
                self.gpu.truncate(0)

    def offload(self, n_gpu_layers: int, arenas: list, output: bool) -> None:
        """Move the last ``n_gpu_layers`` layers (and the output layer if ``output``) to GPUs:
        ``arenas`` gives each of those layers' device (engine.runtime.cuda.device.DeviceArena).
        Their weights are uploaded once, quantized; their KV cache lives on the device.  Raises
        engine.runtime.cuda.device.GpuOutOfMemory, leaving the model on the CPU, when they do not
        fit."""
        from engine.runtime.cuda.gemma3 import Gemma3Gpu

        p = self.params
        if not 0 <= n_gpu_layers <= p.n_layer or len(arenas) != n_gpu_layers:
            raise ModelError(f"cannot offload {n_gpu_layers} of {p.n_layer} layers on {len(arenas)} devices")
        if output and n_gpu_layers < p.n_layer:
            raise ModelError("the output layer goes to a GPU only with every layer")
        if self.gpu is not None or n_gpu_layers == 0:
            if n_gpu_layers or self.gpu is not None:
                raise ModelError("this model is already offloaded")
            return
        with self._lock:
            first = p.n_layer - n_gpu_layers
            self.gpu = Gemma3Gpu(self, first, arenas, output)
            # the GPU layers' host weights and KV cache are no longer needed
            self.layers = self.layers[:first]
            windows = [p.window(i) for i in range(first)]
            self.cache = KVCache(
                self.n_ctx, p.n_head_kv, p.head_dim, windows, self.cache.max_batch, self.cache.dtype
            )

    def forward(self, tokens: np.ndarray, start_pos: int, *, last_only: bool = False) -> np.ndarray:
        """Logits (n_tokens, n_vocab) f32 for ``tokens`` at positions ``start_pos ..``, appended to the
        KV cache (positions >= ``start_pos`` already there are replaced).  ``last_only``: logits of
        the last token only, shape (1, n_vocab) (what generation needs after a prefill)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ModelError(f"forward needs a non-empty 1-D array of token ids, got shape {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ModelError(f"token ids must be in 0..{self.n_vocab - 1}")
        tokens = tokens.astype(np.int64)
        n = tokens.size
        with self._lock:
            if start_pos < 0 or start_pos > self.cache.n_past:
                raise ModelError(
                    f"start_pos {start_pos} is not in 0..{self.cache.n_past} "
                    f"(the KV cache holds {self.cache.n_past} positions)"
                )
            if start_pos + n > self.n_ctx:
                raise ModelError(
                    f"context overflow: positions {start_pos}..{start_pos + n - 1} do not fit in "
                    f"n_ctx={self.n_ctx}; reset the model or load it with a larger n_ctx"
                )
            self.cache.truncate(start_pos)
            if self.gpu is not None:
                self.gpu.truncate(start_pos)
            outs = []
            step = self.cache.max_batch
            for b0 in range(0, n, step):
                chunk = tokens[b0 : b0 + step]
                last = b0 + step >= n
                outs.append(self._forward_batch(chunk, start_pos + b0, last_only and not last, last_only))
            logits = [o for o in outs if o is not None]
            return logits[0] if len(logits) == 1 else np.concatenate(logits)

    def logits_all(self, ids) -> np.ndarray:
        """Reset, then the logits of every position of ``ids`` (n, n_vocab)."""
        self.reset()
        return self.forward(np.asarray(ids), 0)

    # ------------------------------------------------------------------ the graph

    def _see(self, name: str, x: np.ndarray) -> None:
        if self.observer is not None:
            self.observer(name, x)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        x = np.empty((tokens.size, self.params.n_embd), np.float32)
        for i, t in enumerate(tokens):
            x[i] = dequantize_rows(self.tok_embd, int(t), int(t) + 1)[0]
        return x * np.float32(math.sqrt(self.params.n_embd))

    def _forward_batch(self, tokens: np.ndarray, pos0: int, skip_logits: bool, last_only: bool):
        p = self.params
        n = tokens.size
        eps = np.float32(p.eps)
        positions = np.arange(pos0, pos0 + n, dtype=np.int64)
        x = self.embed(tokens)
        for il, L in enumerate(self.layers):
            h = rmsnorm(x, L.attn_norm, eps)
            if self.observer is not None:
                for t in ("attn_q", "attn_k", "attn_v"):
                    self._see(f"blk.{il}.{t}.weight", h)
            q = _mm(L.wq, h).reshape(n, p.n_head, p.head_dim)
            k = _mm(L.wk, h).reshape(n, p.n_head_kv, p.head_dim)
            v = _mm(L.wv, h).reshape(n, p.n_head_kv, p.head_dim)
            q = rmsnorm(q.reshape(-1, p.head_dim), L.q_norm, eps).reshape(q.shape)
            k = rmsnorm(k.reshape(-1, p.head_dim), L.k_norm, eps).reshape(k.shape)
            base, fscale = p.rope(il)
            rope_neox(q, positions, base, fscale)
            rope_neox(k, positions, base, fscale)
            q *= np.float32(p.attn_scale)
            if self.cache.round_f16:
                q = q.astype(np.float16).astype(np.float32)  # llama.cpp converts Q for K·Q with f16 K
            self.cache.write(il, pos0, k, v)
            kc, vc, sp = self.cache.view(il, pos0 + n)
            attn = attention if n <= NUMBA_ATTN_MAX_TOKENS else attention_ref
            a = attn(q, kc, vc, sp, positions, p.window(il), self.cache.round_f16)
            a = a.reshape(n, p.n_head * p.head_dim)
            self._see(f"blk.{il}.attn_output.weight", a)
            a = _mm(L.wo, a)
            if last_only and il == p.n_layer - 1:
                a, x = a[-1:], x[-1:]
            x = x + rmsnorm(a, L.post_attn_norm, eps)
            h = rmsnorm(x, L.ffn_norm, eps)
            if self.observer is not None:
                self._see(f"blk.{il}.ffn_gate.weight", h)
                self._see(f"blk.{il}.ffn_up.weight", h)
            f = geglu(_mm(L.w_gate, h), _mm(L.w_up, h), self.fp16_gelu)
            self._see(f"blk.{il}.ffn_down.weight", f)
            f = _mm(L.w_down, f)
            x = x + rmsnorm(f, L.post_ffw_norm, eps)
        self.cache.n_past = pos0 + n
        if self.gpu is not None:
            x, done = self.gpu.forward(x, pos0, last_only, not skip_logits, self.observer)
            if done:
                return x
        if skip_logits:
            return None
        if last_only:
            x = x[-1:]
        x = rmsnorm(x, self.output_norm, eps)
        self._see("token_embd.weight", x)  # tied output
        logits = _mm(self.tok_embd, x, DECODE_MAX_TOKENS)
        if p.final_softcap > 0:
            c = np.float32(p.final_softcap)
            logits = np.tanh(logits / c) * c
        return logits
