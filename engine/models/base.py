"""What every architecture's model shares (:class:`CausalLM`): its public API over a KV cache
and, optionally, its last layers on GPUs, and the checks and micro-batching around a forward pass.

An architecture (:mod:`engine.models.gemma3`, the llama family of :mod:`engine.models._common`)
brings its weights, its graph (``_forward_batch``, ``_decode_token``), its GPU layers
(``_gpu_layers``) and, where layers differ in attention, their sliding windows (``_windows``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.errors import ModelError
from engine.runtime.kernels import QWeight, dequantize_rows
from engine.runtime.kv_cache import KVCache
from engine.runtime.sampling import TopLogits


def checked_tokens(tokens, n_vocab: int) -> np.ndarray:
    """``tokens`` as a non-empty 1-D int64 array of ids in ``0..n_vocab-1``, else a ModelError."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ModelError(f"forward needs a non-empty 1-D array of token ids, got shape {tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= n_vocab:
        raise ModelError(f"token ids must be in 0..{n_vocab - 1}")
    return tokens.astype(np.int64)


def check_span(start_pos: int, n: int, n_past: int, n_ctx: int) -> None:
    """``n`` tokens from ``start_pos`` must continue (or rewrite) the cache and fit in ``n_ctx``."""
    if start_pos < 0 or start_pos > n_past:
        raise ModelError(
            f"start_pos {start_pos} is not in 0..{n_past} (the KV cache holds {n_past} positions)"
        )
    if start_pos + n > n_ctx:
        raise ModelError(
            f"context overflow: positions {start_pos}..{start_pos + n - 1} do not fit in "
            f"n_ctx={n_ctx}; reset the model or load it with a larger n_ctx"
        )


def in_micro_batches(
    forward_batch, tokens: np.ndarray, start_pos: int, step: int, last_only: bool, top_k: int = 0
) -> np.ndarray | TopLogits:
    """Run ``forward_batch(chunk, pos0, skip_logits, last_only, top_k)`` over chunks of ``step`` tokens
    and join the logits (with ``last_only``, only the final chunk's last row; with ``top_k``, what
    the final chunk returns: its TopLogits where a GPU picked them, else its last logits)."""
    outs = []
    n = tokens.size
    for b0 in range(0, n, step):
        last = b0 + step >= n
        chunk = tokens[b0 : b0 + step]
        outs.append(
            forward_batch(chunk, start_pos + b0, last_only and not last, last_only, top_k if last else 0)
        )
    logits = [o for o in outs if o is not None]
    return logits[0] if len(logits) == 1 else np.concatenate(logits)


def gpu_top_k_limit(gpu) -> int:
    """The largest ``top_k`` a model's ``forward`` picks where the logits are: 0 unless the output
    layer is on a GPU (``gpu``: the model's GPU layers, or None)."""
    if gpu is None or gpu.output is None:
        return 0
    from engine.runtime.cuda.device import TOP_MAX

    return TOP_MAX


def run_forward(net, tokens, start_pos: int, last_only: bool, top_k: int) -> np.ndarray | TopLogits:
    """The body of :meth:`CausalLM.forward`: check the tokens and
    the span, rewind the caches (CPU and GPU) to ``start_pos``, run the micro-batches; a failed
    batch leaves nothing in the CPU cache (appending skips the truncation, so it forgets itself)."""
    tokens = checked_tokens(tokens, net.n_vocab)
    with net._lock:
        check_span(start_pos, tokens.size, net.cache.n_past, net.n_ctx)
        if not net.can_rewind(start_pos):
            raise ModelError(
                f"cannot restart at position {start_pos}: the sliding-window KV cache no longer holds "
                "the keys before it; reset and evaluate from the start"
            )
        net.cache.truncate(start_pos)
        if net.gpu is not None:
            net.gpu.truncate(start_pos)
        try:
            return in_micro_batches(
                net._forward_batch, tokens, start_pos, net.cache.max_batch, last_only or top_k > 0, top_k
            )
        except BaseException:
            net.cache.forget(start_pos)
            raise


def offload_wanted(n_layer: int, n_gpu_layers: int, n_arenas: int, output: bool, offloaded: bool) -> bool:
    """Check a request to move the last ``n_gpu_layers`` layers to GPUs (one arena each; the output
    layer only with every layer); False when there is nothing to move."""
    if not 0 <= n_gpu_layers <= n_layer or n_arenas != n_gpu_layers:
        raise ModelError(f"cannot offload {n_gpu_layers} of {n_layer} layers on {n_arenas} devices")
    if output and n_gpu_layers < n_layer:
        raise ModelError("the output layer goes to a GPU only with every layer")
    if offloaded or n_gpu_layers == 0:
        if n_gpu_layers or offloaded:
            raise ModelError("this model is already offloaded")
        return False
    return True


class CausalLM:
    """A decoder-only model over quantized GGUF weights with its own KV cache (f16 by default).

    Subclasses set, in ``__init__``, what :meth:`_setup` sets, and implement ``_forward_batch``
    (one micro-batch: ``(tokens, pos0, skip_logits, last_only, top_k) -> logits | TopLogits |
    None``) and :meth:`_gpu_layers`.
    """

    params: Any  # the architecture's hyperparameters: n_layer, n_embd, n_vocab, n_head_kv, head_dim
    layers: list[Any]
    tok_embd: QWeight
    output_norm: np.ndarray
    n_ctx: int
    cache: KVCache

    def _setup(
        self,
        params: Any,
        layers: list[Any],
        tok_embd: QWeight,
        output_norm: np.ndarray,
        n_ctx: int,
        kv_type: str,
        max_batch: int,
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
            self._windows(params.n_layer),
            max_batch=min(max_batch, n_ctx),
            dtype=kv_type,
            k_transposed=True,
        )
        # Called as observer(weight_name, x) with the activations ``x`` (n_tokens, n_in) f32 that
        # enter each weight's mat-mul, e.g. ("blk.3.ffn_down.weight", f): what an imatrix needs.
        self.observer: Callable[[str, np.ndarray], None] | None = None
        self._lock = threading.Lock()  # serializes Numba parallel launches from several threads
        self.gpu: Any = None  # the last layers on GPUs (engine.runtime.cuda.layers.GpuLayers)
        self._dec: Any = None  # single-token buffers and kernel calls, built on first use

    def _windows(self, n_layers: int) -> list[int]:
        """The sliding window of each of the first ``n_layers`` layers (0: full attention)."""
        return [0] * n_layers

    def _gpu_layers(self, first: int, arenas: list, output: bool) -> Any:
        """Layers ``first ..`` (and the output layer if ``output``) uploaded to ``arenas``."""
        raise NotImplementedError

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
        engine.runtime.cuda.device.GpuOutOfMemory (or NoGpuKernel), leaving the model on the CPU,
        when they do not fit (or a weight type has no CUDA kernel)."""
        p = self.params
        if not offload_wanted(p.n_layer, n_gpu_layers, len(arenas), output, self.gpu is not None):
            return
        with self._lock:
            first = p.n_layer - n_gpu_layers
            self.gpu = self._gpu_layers(first, arenas, output)
            # the GPU layers' host weights and KV cache are no longer needed
            self.layers = self.layers[:first]
            c = self.cache
            self.cache = KVCache(
                self.n_ctx,
                p.n_head_kv,
                p.head_dim,
                self._windows(first),
                c.max_batch,
                c.dtype,
                k_transposed=True,
            )
            self._dec = None

    def forward(
        self, tokens: np.ndarray, start_pos: int, *, last_only: bool = False, top_k: int = 0
    ) -> np.ndarray | TopLogits:
        """Logits (n_tokens, n_vocab) f32 for ``tokens`` at positions ``start_pos ..``, appended to the
        KV cache (positions >= ``start_pos`` already there are replaced).  ``last_only``: logits of
        the last token only, shape (1, n_vocab) (what generation needs after a prefill).  ``top_k``
        (1 .. :attr:`top_k_limit`; implies ``last_only``): where the output layer is on a GPU, the
        ``top_k`` best logits of the last token and their ids
        (:class:`~engine.runtime.sampling.TopLogits`), picked there so that the logits stay on the
        device; else, or when the logits hold a NaN, +inf or only -inf (for the sampler to reject),
        the last logits as with ``last_only``."""
        return run_forward(self, tokens, start_pos, last_only, top_k)

    @property
    def top_k_limit(self) -> int:
        """The largest ``top_k`` that :meth:`forward` picks where the logits are (:func:`gpu_top_k_limit`)."""
        return gpu_top_k_limit(self.gpu)

    def can_rewind(self, start_pos: int) -> bool:
        """Whether :meth:`forward` may restart at ``start_pos`` (see ``KVCache.can_rewind``)."""
        return self.cache.can_rewind(start_pos)

    def logits_all(self, ids) -> np.ndarray:
        """Reset, then the logits of every position of ``ids`` (n, n_vocab)."""
        self.reset()
        return self.forward(np.asarray(ids), 0)

    # ------------------------------------------------------------------ the graph's helpers

    def _see(self, name: str, x: np.ndarray) -> None:
        if self.observer is not None:
            self.observer(name, x)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """The token embedding rows of ``tokens`` (n, n_embd) f32."""
        x = np.empty((tokens.size, self.params.n_embd), np.float32)
        for i, t in enumerate(tokens):
            x[i] = dequantize_rows(self.tok_embd, int(t), int(t) + 1)[0]
        return x
