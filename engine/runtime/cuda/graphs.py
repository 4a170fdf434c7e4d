"""CUDA graphs for the one-token programs: a decoded token's launches captured once, replayed with
one graph launch per token.

A token through the default model's GPU layers is 164 kernel launches; at the ~5-10 µs of Python
and driver time numba-cuda spends per launch that is 1-2 ms per token, while an H100 reads the
model's weights in ~75 µs.  Every argument of a :class:`~engine.runtime.cuda.decode.Program` is
fixed when it is built (the kernels read the token's position from device memory), so its launches
are recorded into a graph through cuda.core's ``GraphBuilder`` (numba-cuda launches onto a builder
since 0.30) the second time a token needs them (the first runs them kernel by kernel, compiling and
loading every kernel outside the capture), and replayed after that.  One graph per program
sequence (to the next device's hidden state, or to the logits).

Nothing of this runs on Numba's simulator (no graphs there): the simulator, ``KVANT_CUDA_GRAPHS=0``,
a missing cuda.core, or any error while capturing or replaying falls back to launching the
programs one kernel at a time (:attr:`TokenGraphs.why_not` says why).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol


class _Program(Protocol):
    def run(self, stream: Any = None) -> None: ...


def _handle(stream: Any) -> int:
    """The CUstream address of a numba stream (NVIDIA binding object or ctypes handle)."""
    h = stream.handle
    v = getattr(h, "value", None)
    return int(v if v is not None else h)


class TokenGraphs:
    """Graphs of one device's program sequences, keyed by the caller (captured on first use).

    ``stream``: the numba stream the token's copies go to; ``core``: the same stream as a
    cuda.core ``Stream`` (graph builders and graph launches).  Tests pass stand-ins."""

    def __init__(self, stream: Any, core: Any, no_frees: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.stream = stream
        self._core = core
        self._no_frees = no_frees  # numba's defer_cleanup: no cuMemFree (a device sync) mid-capture
        self._graphs: dict[Hashable, Any] = {}
        self._warm: set[Hashable] = set()

    @classmethod
    def for_current_device(cls) -> TokenGraphs:
        from cuda.core import Stream as CoreStream  # numba-cuda's own dependency
        from numba import cuda

        # numba's streams block on (and are waited for by) the legacy default stream, where the
        # prefill and the KV-cache truncation run: so a token's graph starts after them.  Capture
        # is legal on such a stream while nothing else uses the legacy stream (one thread decodes).
        s = cuda.stream()
        return cls(s, CoreStream.from_handle(_handle(s)), cuda.defer_cleanup)

    def warm(self, key: Hashable) -> bool:
        """Whether ``key``'s programs have run once kernel by kernel (so every kernel is compiled
        and loaded before a capture, where module loading could break it); marks them as run."""
        if key in self._warm:
            return True
        self._warm.add(key)
        return False

    def launch(self, key: Hashable, programs: Sequence[_Program]) -> None:
        """Replay the graph of ``programs`` (capturing it the first time ``key`` is launched)."""
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(programs)
            self._graphs[key] = g
        g.launch(self._core)

    def _capture(self, programs: Sequence[_Program]) -> Any:
        gb = self._core.create_graph_builder()
        with self._no_frees():
            gb.begin_building("relaxed")
            try:
                for p in programs:
                    p.run(gb)
            finally:
                gb.end_building()
        g = gb.complete()
        g.upload(self._core)
        return g

    def __len__(self) -> int:
        return len(self._graphs)


def token_graphs(simulator: bool) -> tuple[TokenGraphs | None, str]:
    """(graphs for the current device, "") or (None, why the programs launch kernel by kernel)."""
    if simulator:
        return None, "Numba's CUDA simulator has no graphs"
    if os.environ.get("KVANT_CUDA_GRAPHS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "KVANT_CUDA_GRAPHS=0"
    try:
        return TokenGraphs.for_current_device(), ""
    except Exception as err:  # cuda.core missing or too old, no stream: launch kernel by kernel
        return None, f"CUDA graphs unavailable ({type(err).__name__}: {err})"
