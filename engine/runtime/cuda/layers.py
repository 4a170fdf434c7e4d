"""What the GPU layer stacks of every architecture share: the cache rewind, closing, and the walk of a
forward pass over the GPUs (the layers of one device run together; the hidden state moves between
devices and back to the CPU).  :class:`engine.runtime.cuda.gemma3.Gemma3Gpu` and
:class:`engine.runtime.cuda.decoder.DecoderGpu` add their layers' graph (``_layer``), the output
layer (``_output``) and the one-token programs (``decode``, :mod:`engine.runtime.cuda.decode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import cuda

from engine.runtime.cuda import decode as dec
from engine.runtime.cuda import device as D
from engine.runtime.cuda import kernels as K


class GpuLayers:
    """Layers ``first_layer ..`` of a model on GPUs; subclasses set ``layers`` (each with ``arena``,
    ``slot_pos``), ``arenas``, ``output``, ``decode`` and ``n_past`` and define the graph (``_layer``)."""

    params: Any
    layers: list[Any]
    arenas: list[D.DeviceArena]
    output: Any  # (weight, norm) of the output layer on the last GPU, or None
    output_name: str
    final_softcap: float = 0.0
    decode: list
    n_past: int

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def nbytes(self) -> dict[int, int]:
        return {a.index: a.allocated for a in self.arenas}

    def truncate(self, n_past: int) -> None:
        """Forget positions >= ``n_past`` in every GPU layer's cache."""
        if n_past < self.n_past:
            for L in self.layers:
                with L.arena.on():
                    n = L.slot_pos.shape[0]
                    lc = L.arena.launch
                    K.kv_truncate[D._blocks(n, lc.elem_threads, lc), lc.elem_threads](L.slot_pos, n_past)
        self.n_past = n_past

    def close(self) -> None:
        self.layers.clear()
        self.output = None
        self.decode = []

    def forward(
        self,
        x: np.ndarray,
        pos0: int,
        last_only: bool,
        want_logits: bool,
        see: Callable[[str, np.ndarray], None] | None,
        top_k: int = 0,
    ) -> tuple[Any, bool]:
        """Run the GPU layers on the hidden state ``x`` (n, n_embd) of positions ``pos0 ..``.
        Returns (logits, True) when the output layer is here and ``want_logits``, else
        (hidden state, False) for the CPU to finish.  ``last_only``: only the last row leaves the
        last layer (as on the CPU).  ``top_k``: for one token, the device holding the output layer
        picks the ``top_k`` best logits and returns (:class:`~engine.runtime.sampling.TopLogits`,
        True) (:meth:`decode.Group.run`)."""
        self.truncate(pos0)
        n = x.shape[0]
        if n == 1 and see is None:
            self.n_past = pos0 + 1
            return dec.forward_one(self.decode, x, pos0, want_logits, top_k)
        positions = np.arange(pos0, pos0 + n, dtype=np.int64)
        i = 0
        while i < len(self.layers):
            arena = self.layers[i].arena
            j = i
            while j < len(self.layers) and self.layers[j].arena is arena:
                j += 1
            with arena.on():
                dx = cuda.to_device(np.ascontiguousarray(x, np.float32))
                dpos = cuda.to_device(positions)
                for L in self.layers[i:j]:
                    dx = self._layer(L, dx, dpos, pos0, last_only, see)
                if j == len(self.layers) and self.output is not None and want_logits:
                    self.n_past = pos0 + n
                    return self._output(arena, dx, last_only, see), True
                x = dx.copy_to_host()
            i = j
        self.n_past = pos0 + n
        return x, False

    def _layer(self, L: Any, x, positions, pos0: int, last_only: bool, see):
        raise NotImplementedError

    def _output(self, arena: D.DeviceArena, x, last_only: bool, see) -> np.ndarray:
        """Output norm, the output matrix (``self.output``: (weight, norm), observed as
        ``self.output_name``) and the final soft-cap (``self.final_softcap`` > 0) of the last rows."""
        lc = arena.launch
        if last_only and x.shape[0] > 1:
            x = x[x.shape[0] - 1 :]
        w_out, norm = self.output
        x = D.rmsnorm(lc, x, norm, np.float32(self.params.eps))
        if see is not None:
            see(self.output_name, x.copy_to_host())
        logits = D.matmul(lc, w_out, D.quantize(lc, w_out.act_type, x))
        if self.final_softcap > 0:
            D.softcap(lc, logits, self.final_softcap)
        return logits.copy_to_host()
