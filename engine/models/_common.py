"""What the llama-family decoders share: hyperparameters from GGUF metadata, layer weights, and one
forward pass with per-architecture switches.  Each architecture file (llama, qwen2, qwen3, phi3) is
a thin :class:`Decoder` subclass that says which tensors it needs and how its graph differs.

The graph, llama.cpp's ``llm_build_llama`` and relatives, per layer with ``x`` the residual stream:

    h        = rmsnorm(x) * attn_norm
    q, k, v  = h @ Wq (+ bq), h @ Wk (+ bk), h @ Wv (+ bv)     (or one fused Wqkv, split by rows)
    q, k     = rmsnorm per head * q_norm / k_norm              (qwen3 only)
    q, k     = rope(q), rope(k)                                (NORM mode: llama; NEOX: the others)
    a        = attention(q, k, v) @ Wo (+ bo)
    x        = x + a
    h2       = rmsnorm(x) * ffn_norm
    x        = x + (silu(h2 @ Wgate) * (h2 @ Wup)) @ Wdown     (phi3: Wup fused, gate ‖ up by rows)

then ``rmsnorm(x) * output_norm @ Woutput`` (or the tied token embedding).

Where llama.cpp rounds, we round: the KV cache holds f16 (llama.cpp's default), so the queries are
rounded to f16 for K·Q (ggml converts them to K's type) and the attention probabilities to f16 for
V (see :mod:`engine.runtime.kernels.attention`).  llama, qwen2 and qwen3 pass the 1/sqrt(head_dim)
scale to llama.cpp's softmax (applied to the f32 scores), phi3 multiplies Q by it before the
cache; our attention kernels take the same ``kq_scale`` for the scores, so both are llama.cpp's
arithmetic.  Activations entering every mat-mul are quantized per block as
llama.cpp's CPU backend does (:mod:`engine.runtime.kernels.qmatmul`).

:meth:`Decoder.offload` moves the last layers (and, with all of them, the output layer) to GPUs,
where :mod:`engine.runtime.cuda.decoder` runs the same graph on CUDA kernels; the CPU layers hand
it the residual stream of each micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import numpy as np

from engine.errors import ModelError
from engine.gguf import GGUFModel
from engine.models.base import CausalLM
from engine.runtime.kernels import (
    QWeight,
    SharedActivations,
    attention_kt,
    fused,
    matvec,
    repack,
    rmsnorm,
)
from engine.runtime.kernels.ops import rope, swiglu
from engine.runtime.kernels.qgemm import qgemm
from engine.runtime.kernels.qmatmul import widen_q5_0

MAX_BATCH = 512  # tokens per internal micro-batch

K = gguf.Keys
TN = gguf.TENSOR_NAMES
MT = gguf.MODEL_TENSOR


def tensor_name(t: gguf.MODEL_TENSOR, layer: int | None = None, suffix: str = "weight") -> str:
    """GGUF tensor name from gguf-py's table, e.g. (ATTN_Q, 3) -> ``blk.3.attn_q.weight``."""
    base = TN[t].format(bid=layer) if layer is not None else TN[t]
    return f"{base}.{suffix}"


def _mm(w: QWeight, x: np.ndarray | SharedActivations) -> np.ndarray:
    """``x @ W.T``: one token by the mat-vec kernels, several (prefill) by the token-tiled kernels,
    which give the same numbers bit for bit (so prefill and decode logits agree exactly).  ``x``
    may be :class:`SharedActivations` (converted once for the weights reading the same input)."""
    acts = x if isinstance(x, SharedActivations) else SharedActivations(x)
    act, x = acts.for_weight(w), acts.x
    return matvec(w, x, act=act) if x.shape[0] == 1 else qgemm(w, x, act=act)


@dataclass(frozen=True)
class DecoderParams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    n_ff: int
    eps: float
    rope_base: float
    rope_freq_scale: float
    rope_attn_factor: float
    rope_neox: bool
    n_ctx_train: int
    n_ctx_orig: int
    attn_scale: float

    @property
    def n_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_kv(self) -> int:
        return self.n_head_kv * self.head_dim


class MetadataReader:
    """``{arch}.*`` keys of a GGUF file with :class:`ModelError` for missing required ones."""

    def __init__(self, model: GGUFModel, arch: str) -> None:
        found = model.get("general.architecture")
        if found != arch:
            raise ModelError(f"{model.path.name}: architecture is {found!r}, not {arch!r}")
        self.model = model
        self.arch = arch

    def get(self, key: str, default=None, *, required: bool = False):
        full = key.format(arch=self.arch)
        v = self.model.get(full, None)
        if v is None:
            if required:
                raise ModelError(f"{self.model.path.name}: metadata key {full} is missing")
            return default
        return v


def read_params(model: GGUFModel, arch: str, *, neox: bool) -> DecoderParams:
    """Hyperparameters as llama.cpp's ``llm_load_hparams`` reads them for these architectures."""
    md = MetadataReader(model, arch)
    n_embd = int(md.get(K.LLM.EMBEDDING_LENGTH, required=True))
    n_layer = int(md.get(K.LLM.BLOCK_COUNT, required=True))
    n_head = int(md.get(K.Attention.HEAD_COUNT, required=True))
    n_head_kv = int(md.get(K.Attention.HEAD_COUNT_KV, n_head))
    if n_head < 1 or n_head_kv < 1 or n_head % n_head_kv:
        raise ModelError(f"{model.path.name}: {n_head} heads cannot share {n_head_kv} KV heads")
    head_dim = int(md.get(K.Attention.KEY_LENGTH, n_embd // n_head))
    v_dim = int(md.get(K.Attention.VALUE_LENGTH, head_dim))
    if v_dim != head_dim:
        raise ModelError(f"{model.path.name}: key length {head_dim} != value length {v_dim}")
    n_rot = int(md.get(K.Rope.DIMENSION_COUNT, head_dim))
    if n_rot != head_dim:  # llama.cpp asserts this for llama, qwen2, qwen3 (and phi3 GGUFs have it)
        raise ModelError(f"{model.path.name}: rope dimension {n_rot} != head dimension {head_dim}")
    scaling = str(md.get(K.Rope.SCALING_TYPE, "none"))
    if scaling == "yarn":
        raise ModelError(f"{model.path.name}: YaRN rope scaling is not supported by the CPU engine yet")
    # llama.cpp: freq_scale = 1 / rope.scaling.factor whenever the key is there (0: none)
    factor = float(md.get(K.Rope.SCALING_FACTOR, 0.0) or 0.0)
    n_ctx_train = int(md.get(K.LLM.CONTEXT_LENGTH, 0) or 0)
    if not model.has_tensor(tensor_name(MT.TOKEN_EMBD)):
        raise ModelError(f"{model.path.name}: tensor {tensor_name(MT.TOKEN_EMBD)} is missing")
    emb = model.tensor(tensor_name(MT.TOKEN_EMBD))
    n_vocab = int(emb.shape[0])
    if int(emb.shape[1]) != n_embd:
        raise ModelError(f"{model.path.name}: token_embd has {emb.shape[1]} columns, expected {n_embd}")
    return DecoderParams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_rot=n_rot,
        n_ff=int(md.get(K.LLM.FEED_FORWARD_LENGTH, required=True)),
        eps=float(md.get(K.Attention.LAYERNORM_RMS_EPS, required=True)),
        rope_base=float(md.get(K.Rope.FREQ_BASE, 10000.0)),
        rope_freq_scale=1.0 / factor if factor else 1.0,
        rope_attn_factor=float(md.get(K.Rope.SCALING_ATTN_FACTOR, 1.0)),
        rope_neox=neox,
        n_ctx_train=n_ctx_train,
        n_ctx_orig=int(md.get(K.Rope.SCALING_ORIG_CTX_LEN, n_ctx_train) or n_ctx_train),
        attn_scale=1.0 / math.sqrt(head_dim),
    )


# ------------------------------------------------------------------------------------- weights


# Q5_0 matrices run as Q8_0 codes (engine.runtime.kernels.qmatmul.widen_q5_0: same values, about
# twice the decode speed, 34 instead of 22 bytes per 32 weights) when they are at most this share of
# a model's tensor bytes: a K-quant mix falls back to Q5_0 for rows K-quants cannot block (the
# default model's 640-wide ones: 18% of it), so the memory cost stays small; a model quantized to
# Q5_0 throughout keeps its compact blocks.
WIDEN_Q5_0_MAX_SHARE = 0.25


def widen_q5_0_in(model: GGUFModel) -> bool:
    """Whether ``model``'s Q5_0 matrices are widened to Q8_0 codes at load (:data:`WIDEN_Q5_0_MAX_SHARE`)."""
    total = sum(t.nbytes for t in model.tensors)
    q5 = sum(t.nbytes for t in model.tensors if t.type == gguf.GGMLQuantizationType.Q5_0)
    return 0 < q5 <= WIDEN_Q5_0_MAX_SHARE * total


def load_qweight(model: GGUFModel, name: str, widen: bool) -> QWeight:
    """A matrix repacked for the kernels (Q5_0 widened when ``widen``); the file's pages of it are
    then let go, so the load's resident memory holds each weight once, not mapped and repacked."""
    t = model.tensor(name)
    rows, cols = (int(d) for d in t.shape)
    raw = model.raw(name)
    sliced = []  # a large tensor's slices, let go of as soon as they are copied

    def copied(start: int, stop: int) -> None:
        sliced.append((start, stop))
        model.release(name, start, stop)

    w = repack(raw, t.type, rows, cols, copied)
    if widen:
        w = widen_q5_0(w)
    if not sliced and not any(np.may_share_memory(f, raw) for f in w.fields):
        model.release(name)
    return w


class Weights:
    """Typed access to a GGUF file's tensors with :class:`ModelError` for missing or misshapen ones."""

    def __init__(self, model: GGUFModel) -> None:
        self.model = model
        self.widen_q5_0 = widen_q5_0_in(model)

    def has(self, name: str) -> bool:
        return self.model.has_tensor(name)

    def _need(self, name: str) -> None:
        if not self.model.has_tensor(name):
            raise ModelError(f"{self.model.path.name}: tensor {name} is missing")

    def matrix(self, name: str, rows: int, cols: int) -> QWeight:
        self._need(name)
        t = self.model.tensor(name)
        if tuple(int(d) for d in t.shape) != (rows, cols):
            raise ModelError(
                f"{self.model.path.name}: {name} has shape {tuple(t.shape)}, expected ({rows}, {cols})"
            )
        return load_qweight(self.model, name, self.widen_q5_0)

    def vector(self, name: str, n: int) -> np.ndarray:
        self._need(name)
        shape = tuple(int(d) for d in self.model.tensor(name).shape)
        if shape != (n,):
            raise ModelError(f"{self.model.path.name}: {name} has shape {shape}, expected ({n},)")
        return np.array(self.model.array(name), np.float32).reshape(n)

    def optional_vector(self, name: str, n: int) -> np.ndarray | None:
        return self.vector(name, n) if self.has(name) else None


@dataclass(frozen=True, eq=False)
class DecoderLayer:
    attn_norm: np.ndarray
    wq: QWeight | None  # None when wqkv (fused) is used
    wk: QWeight | None
    wv: QWeight | None
    wqkv: QWeight | None
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    wo: QWeight
    bo: np.ndarray | None
    ffn_norm: np.ndarray
    w_gate: QWeight | None  # None: w_up is fused (gate rows first, then up)
    w_up: QWeight
    w_down: QWeight


def load_layer(
    w: Weights,
    p: DecoderParams,
    il: int,
    *,
    qkv_bias: bool = False,
    qk_norm: bool = False,
    fused_up: bool = False,
) -> DecoderLayer:
    """One layer's weights.  Fused ``attn_qkv`` is used when present, else ``attn_q/k/v`` (as
    llama.cpp's ``create_tensor_qkv``).  ``qkv_bias``: q/k/v biases required (qwen2), otherwise
    optional; ``attn_output.bias`` is always optional.  ``qk_norm``: per-head q/k RMSNorm weights
    required (qwen3).  ``fused_up``: ``ffn_up`` holds gate ‖ up (2·n_ff rows) and there is no
    ``ffn_gate`` (phi3)."""
    e, f = p.n_embd, p.n_ff

    def n(t, suffix="weight"):
        return tensor_name(t, il, suffix)

    wq = wk = wv = wqkv = None
    if w.has(n(MT.ATTN_QKV)):
        wqkv = w.matrix(n(MT.ATTN_QKV), p.n_q + 2 * p.n_kv, e)
    else:
        wq = w.matrix(n(MT.ATTN_Q), p.n_q, e)
        wk = w.matrix(n(MT.ATTN_K), p.n_kv, e)
        wv = w.matrix(n(MT.ATTN_V), p.n_kv, e)
    if qkv_bias:
        bq = w.vector(n(MT.ATTN_Q, "bias"), p.n_q)
        bk = w.vector(n(MT.ATTN_K, "bias"), p.n_kv)
        bv = w.vector(n(MT.ATTN_V, "bias"), p.n_kv)
    else:
        bq = w.optional_vector(n(MT.ATTN_Q, "bias"), p.n_q)
        bk = w.optional_vector(n(MT.ATTN_K, "bias"), p.n_kv)
        bv = w.optional_vector(n(MT.ATTN_V, "bias"), p.n_kv)
    if fused_up:
        w_gate = None
        w_up = w.matrix(n(MT.FFN_UP), 2 * f, e)
    else:
        w_gate = w.matrix(n(MT.FFN_GATE), f, e)
        w_up = w.matrix(n(MT.FFN_UP), f, e)
    return DecoderLayer(
        attn_norm=w.vector(n(MT.ATTN_NORM), e),
        wq=wq,
        wk=wk,
        wv=wv,
        wqkv=wqkv,
        bq=bq,
        bk=bk,
        bv=bv,
        q_norm=w.vector(n(MT.ATTN_Q_NORM), p.head_dim) if qk_norm else None,
        k_norm=w.vector(n(MT.ATTN_K_NORM), p.head_dim) if qk_norm else None,
        wo=w.matrix(n(MT.ATTN_OUT), e, p.n_q),
        bo=w.optional_vector(n(MT.ATTN_OUT, "bias"), e),
        ffn_norm=w.vector(n(MT.FFN_NORM), e),
        w_gate=w_gate,
        w_up=w_up,
        w_down=w.matrix(n(MT.FFN_DOWN), e, f),
    )


# ------------------------------------------------------------------------------------- the model


class Decoder(CausalLM):
    """A llama-family decoder over quantized GGUF weights with its own f16 KV cache.

    Subclasses set ``ARCH``, ``NEOX`` (rope mode), ``QKV_BIAS``, ``QK_NORM``, ``FUSED_UP`` and
    ``SCALE_Q`` (scale queries before the cache, phi3) and may override :meth:`rope_factors`.
    """

    ARCH = ""
    NEOX = True
    QKV_BIAS = False
    QK_NORM = False
    FUSED_UP = False
    SCALE_Q = False

    def __init__(
        self,
        params: DecoderParams,
        layers: list[DecoderLayer],
        tok_embd: QWeight,
        output_norm: np.ndarray,
        output: QWeight | None,
        freq_factors: np.ndarray | None,
        n_ctx: int,
        kv_type: str = "f16",
    ) -> None:
        self._setup(params, layers, tok_embd, output_norm, n_ctx, kv_type, MAX_BATCH)
        self.output = output  # None: tied to tok_embd
        half = params.n_rot // 2
        self.freq_factors = np.ones(half, np.float32) if freq_factors is None else freq_factors

    # ------------------------------------------------------------------ loading

    @classmethod
    def read_params(cls, model: GGUFModel) -> DecoderParams:
        return read_params(model, cls.ARCH, neox=cls.NEOX)

    @classmethod
    def rope_factors(cls, w: Weights, p: DecoderParams, n_ctx: int) -> np.ndarray | None:
        """Per-pair rope frequency divisors (n_rot/2,), or None."""
        return None

    @classmethod
    def from_gguf(cls, model: GGUFModel, n_ctx: int = 4096, kv_type: str = "f16") -> Decoder:
        if n_ctx < 1:
            raise ModelError(f"n_ctx must be at least 1, not {n_ctx}")
        p = cls.read_params(model)
        w = Weights(model)
        layers = [
            load_layer(w, p, il, qkv_bias=cls.QKV_BIAS, qk_norm=cls.QK_NORM, fused_up=cls.FUSED_UP)
            for il in range(p.n_layer)
        ]
        tok = w.matrix(tensor_name(MT.TOKEN_EMBD), p.n_vocab, p.n_embd)
        out_name = tensor_name(MT.OUTPUT)
        output = w.matrix(out_name, p.n_vocab, p.n_embd) if w.has(out_name) else None
        norm = w.vector(tensor_name(MT.OUTPUT_NORM), p.n_embd)
        return cls(p, layers, tok, norm, output, cls.rope_factors(w, p, n_ctx), n_ctx, kv_type)

    # ------------------------------------------------------------------ public API

    @property
    def output_name(self) -> str:
        return tensor_name(MT.OUTPUT if self.output is not None else MT.TOKEN_EMBD)

    def _gpu_layers(self, first: int, arenas: list, output: bool):
        from engine.runtime.cuda.decoder import DecoderGpu

        return DecoderGpu(self, first, arenas, output)

    # ------------------------------------------------------------------ the graph

    def _qkv(self, il: int, L: DecoderLayer, h: np.ndarray):
        p = self.params
        n = h.shape[0]
        if L.wqkv is not None:
            self._see(tensor_name(MT.ATTN_QKV, il), h)
            qkv = _mm(L.wqkv, h)
            q = qkv[:, : p.n_q]
            k = qkv[:, p.n_q : p.n_q + p.n_kv]
            v = qkv[:, p.n_q + p.n_kv :]
        else:
            if self.observer is not None:
                for t in (MT.ATTN_Q, MT.ATTN_K, MT.ATTN_V):
                    self._see(tensor_name(t, il), h)
            hs = SharedActivations(h)
            q, k, v = _mm(L.wq, hs), _mm(L.wk, hs), _mm(L.wv, hs)
        if L.bq is not None:
            q = q + L.bq
        if L.bk is not None:
            k = k + L.bk
        if L.bv is not None:
            v = v + L.bv
        q = np.ascontiguousarray(q).reshape(n, p.n_head, p.head_dim)
        k = np.ascontiguousarray(k).reshape(n, p.n_head_kv, p.head_dim)
        v = np.ascontiguousarray(v).reshape(n, p.n_head_kv, p.head_dim)
        return q, k, v

    def _forward_batch(self, tokens: np.ndarray, pos0: int, skip_logits: bool, last_only: bool, top_k: int):
        p = self.params
        n = tokens.size
        eps = np.float32(p.eps)
        if n == 1 and self.observer is None:
            return self._decode_token(int(tokens[0]), pos0, skip_logits, top_k)
        positions = np.arange(pos0, pos0 + n, dtype=np.int64)
        scale = np.float32(p.attn_scale)
        ff, neox = self.freq_factors, p.rope_neox
        x = self.embed(tokens)
        for il, L in enumerate(self.layers):
            h = rmsnorm(x, L.attn_norm, eps)
            q, k, v = self._qkv(il, L, h)
            if L.q_norm is not None:
                q = rmsnorm(q.reshape(-1, p.head_dim), L.q_norm, eps).reshape(q.shape)
                k = rmsnorm(k.reshape(-1, p.head_dim), L.k_norm, eps).reshape(k.shape)
            for t in (q, k):
                rope(t, positions, p.n_rot, p.rope_base, p.rope_freq_scale, ff, p.rope_attn_factor, neox)
            kq_scale = np.float32(1.0)
            if self.SCALE_Q:  # ggml_scale(Q) before K·Q: scale, then f16
                q *= scale
            else:  # K·Q on the f16 query, scale on the f32 scores (in the softmax)
                kq_scale = scale
            if self.cache.round_f16:
                q = q.astype(np.float16).astype(np.float32)
            c = self.cache
            c.write(il, pos0, k, v)
            ns = min(c.slots[il], pos0 + n)
            a = attention_kt(q, c.kt[il], c.v[il], c.slot_pos[il], ns, positions, 0, c.round_f16, kq_scale)
            a = a.reshape(n, p.n_q)
            self._see(tensor_name(MT.ATTN_OUT, il), a)
            a = _mm(L.wo, a)
            if L.bo is not None:
                a = a + L.bo
            if last_only and il == p.n_layer - 1:
                a, x = a[-1:], x[-1:]
            x = a + x
            h = rmsnorm(x, L.ffn_norm, eps)
            if L.w_gate is None:
                self._see(tensor_name(MT.FFN_UP, il), h)
                gu = _mm(L.w_up, h)
                f = swiglu(gu[:, : p.n_ff], gu[:, p.n_ff :])
            else:
                if self.observer is not None:
                    self._see(tensor_name(MT.FFN_GATE, il), h)
                    self._see(tensor_name(MT.FFN_UP, il), h)
                hs = SharedActivations(h)
                f = swiglu(_mm(L.w_gate, hs), _mm(L.w_up, hs))
            self._see(tensor_name(MT.FFN_DOWN, il), f)
            x = _mm(L.w_down, f) + x
        self.cache.n_past = pos0 + n
        return self._head(x, pos0, skip_logits, last_only, top_k)

    def _head(self, x: np.ndarray, pos0: int, skip_logits: bool, last_only: bool, top_k: int = 0):
        """GPU layers (if any), then the output norm and logits of the residual stream ``x``."""
        if self.gpu is not None:
            x, done = self.gpu.forward(x, pos0, last_only, not skip_logits, self.observer, top_k)
            if done:
                return x
        if skip_logits:
            return None
        if last_only:
            x = x[-1:]
        x = rmsnorm(x, self.output_norm, np.float32(self.params.eps))
        self._see(self.output_name, x)
        w_out = self.tok_embd if self.output is None else self.output
        # same quantized activations either way; only the summation order differs
        return matvec(w_out, x)  # llama.cpp's integer arithmetic at every size (the tiled kernels)

    # ------------------------------------------------------------------ single-token decode

    def _decode_token(self, token: int, pos: int, skip_logits: bool, top_k: int = 0):
        """One token with the fused kernels and preallocated buffers: the same numbers, bit for
        bit, as :meth:`_forward_batch`'s graph."""
        d = self._dec
        if d is None:
            d = self._dec = _Decode(self)
        p = self.params
        eps = np.float32(p.eps)
        cache = self.cache
        xv = d.x[0]
        if d.embed is not None:
            fused.embed_q8_0(*d.embed, token, np.float32(1.0), xv)
        else:
            xv[:] = self.embed(np.array([token], np.int64))[0]
        d.qpos[0] = pos
        n_layers = len(self.layers)
        for il, L in enumerate(self.layers):
            ld = d.layers[il]
            if il == 0:
                fused.rms_act(xv, L.attn_norm, eps, *d.in_args)
            for fn, args in ld.qkv:
                fn(*args)
            for out, b in ld.biases:
                np.add(out, b, out=out)
            slot = pos % cache.slots[il]
            fused.qk_rope_cache(*ld.rope_args, pos, *d.rope_args, *ld.cache_args, slot)
            ns = min(cache.slots[il], pos + 1)
            fused.attend_one(
                d.q3[0], cache.kt[il], cache.v[il], cache.slot_pos[il], ns, pos, 0, cache.round_f16,
                d.kq_scale, d.scores, d.attn_buf.h,
            )  # fmt: skip
            fused.act(d.attn_buf.h, *d.attn_args)
            ld.wo[0](*ld.wo[1])
            if L.bo is not None:
                np.add(d.o_out, L.bo, out=d.o_out)
            fused.add_rms_act(xv, d.o_out[0], d.one, False, eps, L.ffn_norm, *d.in_args)
            for fn, args in ld.gate_up:
                fn(*args)
            fused.swiglu_act(*ld.gu, *d.ff_args)
            ld.down[0](*ld.down[1])
            if il + 1 < n_layers:
                nxt = self.layers[il + 1].attn_norm
                fused.add_rms_act(xv, d.o_out[0], d.one, False, eps, nxt, *d.in_args)
            else:
                np.add(d.o_out[0], xv, out=xv)
        cache.n_past = pos + 1
        if self.gpu is not None:
            return self._head(d.x.copy(), pos, skip_logits, False, top_k)
        if skip_logits:
            return None
        logits = np.empty((1, p.n_vocab), np.float32)
        fused.rms_act(xv, self.output_norm, eps, *d.out_args)
        fn, args = fused.matvec_call(self.tok_embd if self.output is None else self.output, d.out_buf, logits)
        fn(*args)
        return logits


class _Decode:
    """Per-model single-token state: activation buffers, mat-vec outputs, and each layer's kernel
    calls with their arguments bound (built once)."""

    def __init__(self, m: Decoder) -> None:
        p = m.params
        cache = m.cache
        f32 = np.float32
        self.x = np.zeros((1, p.n_embd), f32)
        self.in_buf = fused.ActBuffers(p.n_embd)  # input of q/k/v and of gate/up
        self.attn_buf = fused.ActBuffers(p.n_q)  # input of wo
        self.ff_buf = fused.ActBuffers(p.n_ff)  # input of down
        self.out_buf = fused.ActBuffers(p.n_embd)  # input of the output matrix
        self.qkv_out = np.zeros((1, p.n_q + 2 * p.n_kv), f32)
        q_out = self.qkv_out[:, : p.n_q]
        k_out = self.qkv_out[:, p.n_q : p.n_q + p.n_kv]
        v_out = self.qkv_out[:, p.n_q + p.n_kv :]
        q_sep, k_sep, v_sep = (np.zeros((1, n), f32) for n in (p.n_q, p.n_kv, p.n_kv))
        self.o_out = np.zeros((1, p.n_embd), f32)  # wo and down outputs
        self.gu_out = np.zeros((1, 2 * p.n_ff), f32)
        g_out, u_out = self.gu_out[:, : p.n_ff], self.gu_out[:, p.n_ff :]
        g_sep, u_sep = np.zeros((1, p.n_ff), f32), np.zeros((1, p.n_ff), f32)
        self.q3 = np.zeros((1, p.n_head, p.head_dim), f32)
        self.kq_scale = f32(1.0) if m.SCALE_Q else f32(p.attn_scale)
        self.scores = np.zeros((p.n_head, max([kt.shape[2] for kt in cache.kt] or [1])), f32)
        self.qpos = np.zeros(1, np.int64)
        self.one = np.ones(1, f32)
        tok = m.tok_embd
        self.embed = (tok.fields[0], tok.fields[1]) if tok.qtype == "Q8_0" else None
        no_norm = np.ones(p.head_dim, f32)
        self.layers = []
        for il, L in enumerate(m.layers):
            ld = _DecodeLayer()
            if L.wqkv is not None:
                ld.qkv = [fused.matvec_call(L.wqkv, self.in_buf, self.qkv_out)]
                q, k, v = q_out, k_out, v_out
            else:
                q, k, v = q_sep, k_sep, v_sep
                ld.qkv = [fused.matvec_call(w, self.in_buf, o) for w, o in ((L.wq, q), (L.wk, k), (L.wv, v))]
            ld.biases = [(o, b) for o, b in ((q, L.bq), (k, L.bk), (v, L.bv)) if b is not None]
            if L.w_gate is None:
                ld.gate_up = [fused.matvec_call(L.w_up, self.in_buf, self.gu_out)]
                ld.gu = (g_out[0], u_out[0])
            else:
                ld.gate_up = [
                    fused.matvec_call(L.w_gate, self.in_buf, g_sep),
                    fused.matvec_call(L.w_up, self.in_buf, u_sep),
                ]
                ld.gu = (g_sep[0], u_sep[0])
            ld.wo = fused.matvec_call(L.wo, self.attn_buf, self.o_out)
            ld.down = fused.matvec_call(L.w_down, self.ff_buf, self.o_out)
            has_norm = L.q_norm is not None
            ld.rope_args = (
                q[0],
                k[0],
                v[0],
                L.q_norm if has_norm else no_norm,
                L.k_norm if has_norm else no_norm,
                has_norm,
                f32(p.eps),
            )
            ld.cache_args = (cache.k[il], cache.v[il], cache.kt[il], True, cache.slot_pos[il])
            self.layers.append(ld)
        self.rope_args = (
            p.n_rot,
            float(p.rope_base),
            float(p.rope_freq_scale),
            m.freq_factors,
            float(p.rope_attn_factor),
            bool(p.rope_neox),
            False,
            f32(p.attn_scale) if m.SCALE_Q else f32(1.0),  # else the softmax scales the scores
            bool(m.SCALE_Q),
            cache.round_f16,
            self.q3[0],
        )
        w_out = m.tok_embd if m.output is None else m.output
        fused.matvec_call(w_out, self.out_buf, np.zeros((1, 1), f32))  # sets out_buf's flags
        self.in_args = (self.in_buf.h, *self.in_buf.outs())
        self.attn_args = self.attn_buf.outs()
        self.ff_args = (self.ff_buf.h, *self.ff_buf.outs())
        self.out_args = (self.out_buf.h, *self.out_buf.outs())


class _DecodeLayer:
    qkv: list
    biases: list
    gate_up: list
    gu: tuple
    wo: tuple
    down: tuple
    rope_args: tuple
    cache_args: tuple
