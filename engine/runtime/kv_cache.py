"""A per-layer KV cache sized from ``n_ctx``, ring-buffered on sliding-window layers.

A full-attention layer keeps ``n_ctx`` slots (position ``p`` in slot ``p``).  A sliding-window
layer (window ``w``) keeps ``w + max_batch - 1`` slots rounded up to a multiple of 64 (at most
``n_ctx``) as a ring (position ``p`` in slot ``p % slots``): enough for every query of a batch of
up to ``max_batch`` tokens to still see its last ``w`` keys after the whole batch is written, and
a slot's index agrees with its position modulo 64, which the attention kernels' lanes rely on
(llama.cpp's cells hold positions).

``dtype="f16"`` (llama.cpp's default) stores values rounded to fp16 (held in f32 arrays so the
Numba kernels read them directly); ``"f32"`` stores them as computed.

``k_transposed=True`` keeps every layer's keys as ``kt`` (n_kv_head, head_dim, :func:`kt_width`
of the slots: the kernels read whole 16-slot blocks) instead, the
layout the attention kernels that read it (:func:`engine.runtime.kernels.attention.attention_kt`,
:func:`engine.runtime.kernels.fused.attend_one`) vectorize over; ``k`` then holds no slots and
:meth:`view` is not available.
"""

from __future__ import annotations

import numpy as np

from engine.errors import ModelError
from engine.runtime.kernels.ops import kv_store


def kt_width(slots: int) -> int:
    """Row length of transposed keys for ``slots`` slots: whole 16-slot blocks, and not a multiple
    of 128 (a row stride of a multiple of 512 bytes maps the rows a score reads onto a few cache
    sets: 2.6x slower prefill attention at 512 slots)."""
    w = -(-slots // 16) * 16
    return w + 16 if w % 128 == 0 else w


def layer_slots(n_ctx: int, window: int, max_batch: int) -> int:
    """Slots of one layer's cache: ``n_ctx``, or for a sliding window ``w`` a ring of
    ``w + max_batch - 1`` rounded up to a multiple of 64 (at most ``n_ctx``)."""
    if window <= 0:
        return n_ctx
    return min(n_ctx, -(-(window + max_batch - 1) // 64) * 64)


def ring_keeps(n_ctx: int, window: int, slots: int, start_pos: int, n_past: int) -> bool:
    """Whether a layer of ``slots`` slots (a ring when fewer than ``n_ctx``) holding positions
    ``< n_past`` still has every key a batch restarting at ``start_pos`` sees: a ring holds only
    its last ``slots`` positions, and the first restarted token looks back ``window - 1``."""
    if window <= 0 or slots >= n_ctx or start_pos <= 0:
        return True
    return max(0, start_pos - window + 1) >= n_past - slots


class KVCache:
    """K and V for every layer; :meth:`write` a batch, then :meth:`view` what attention reads."""

    def __init__(
        self,
        n_ctx: int,
        n_kv_head: int,
        head_dim: int,
        windows: list[int],
        max_batch: int,
        dtype: str = "f16",
        k_transposed: bool = False,
    ) -> None:
        if dtype not in ("f16", "f32"):
            raise ModelError(f"KV cache type must be 'f16' or 'f32', not {dtype!r}")
        if n_ctx < 1 or max_batch < 1:
            raise ModelError(f"KV cache needs n_ctx >= 1 and max_batch >= 1 (got {n_ctx}, {max_batch})")
        self.n_ctx = n_ctx
        self.max_batch = max_batch
        self.dtype = dtype
        self.windows = list(windows)
        self.slots = [
            n_ctx if w <= 0 else min(n_ctx, -(-(w + max_batch - 1) // 64) * 64) for w in self.windows
        ]
        self.k = [np.zeros((0 if k_transposed else s, n_kv_head, head_dim), np.float32) for s in self.slots]
        self.v = [np.zeros((s, n_kv_head, head_dim), np.float32) for s in self.slots]
        self.slot_pos = [np.full(s, -1, np.int64) for s in self.slots]
        self.kt = (
            [np.zeros((n_kv_head, head_dim, kt_width(s)), np.float32) for s in self.slots]
            if k_transposed
            else None
        )
        self.n_past = 0

    @property
    def round_f16(self) -> bool:
        return self.dtype == "f16"

    @property
    def nbytes(self) -> int:
        kt = sum(a.nbytes for a in self.kt) if self.kt is not None else 0
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v) + kt

    def reset(self) -> None:
        for sp in self.slot_pos:
            sp.fill(-1)
        self.n_past = 0

    def check(self, start_pos: int, n_tokens: int) -> None:
        """Raise :class:`ModelError` unless positions ``start_pos .. start_pos + n_tokens`` fit."""
        if n_tokens > self.max_batch:
            raise ModelError(f"a batch of {n_tokens} tokens is larger than the KV cache's {self.max_batch}")
        if start_pos < 0 or start_pos > self.n_past:
            raise ModelError(
                f"start_pos {start_pos} is not in 0..{self.n_past} (the cache holds {self.n_past} positions)"
            )
        if start_pos + n_tokens > self.n_ctx:
            raise ModelError(
                f"context overflow: positions {start_pos}..{start_pos + n_tokens - 1} do not fit in "
                f"n_ctx={self.n_ctx}; reset the model or load it with a larger n_ctx"
            )

    def can_rewind(self, start_pos: int) -> bool:
        """Whether a batch restarting at ``start_pos`` still finds every key it may see
        (:func:`ring_keeps` for every layer)."""
        if start_pos >= self.n_past:
            return True  # appending: every ring holds at least a window
        return all(
            ring_keeps(self.n_ctx, w, s, start_pos, self.n_past)
            for w, s in zip(self.windows, self.slots, strict=True)
        )

    def truncate(self, n_past: int) -> None:
        """Forget positions >= ``n_past`` (a batch restarting before the end of the cache)."""
        if n_past >= self.n_past:  # appending: nothing to forget (a decoded token, every time)
            self.n_past = n_past
            return
        self.forget(n_past)

    def forget(self, n_past: int) -> None:
        """Forget positions >= ``n_past``, also those a failed batch wrote beyond :attr:`n_past`."""
        for sp in self.slot_pos:
            sp[sp >= n_past] = -1
        self.n_past = min(self.n_past, n_past)

    def write(self, layer: int, start_pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store k, v (n, n_kv_head, head_dim) for positions ``start_pos ..``."""
        n = k.shape[0]
        if self.kt is not None and n:  # one parallel pass: f16 rounding and the transpose
            kv_store(
                np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32),
                self.kt[layer], self.v[layer], self.slot_pos[layer], start_pos, self.round_f16,
            )  # fmt: skip
            return
        s0 = start_pos % self.slots[layer] if n else 0
        if s0 + n <= self.slots[layer]:  # no wrap: slices, not a gather/scatter by slot index
            slots = slice(s0, s0 + n)
        else:
            slots = np.arange(start_pos, start_pos + n) % self.slots[layer]
        if self.round_f16:
            k = k.astype(np.float16)
            v = v.astype(np.float16)
        self.v[layer][slots] = v
        if self.kt is not None:
            self.kt[layer][:, :, slots] = np.transpose(k, (1, 2, 0))
        else:
            self.k[layer][slots] = k
        self.slot_pos[layer][slots] = np.arange(start_pos, start_pos + n)

    def view(self, layer: int, end_pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k, v, slot_pos) of the slots attention may read once positions < ``end_pos`` are written."""
        if self.kt is not None:
            raise ModelError("this KV cache keeps its keys transposed only (read kt)")
        n = min(self.slots[layer], end_pos)
        return self.k[layer][:n], self.v[layer][:n], self.slot_pos[layer][:n]
