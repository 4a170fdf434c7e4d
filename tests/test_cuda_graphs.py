"""CUDA graphs of the one-token programs (engine/runtime/cuda/graphs.py), on the simulator.

Numba's simulator has no graphs, so capture is emulated where numba-cuda does it: between
``begin_building`` and ``end_building`` a launch is recorded (kernel, grid, block, arguments)
instead of run, and a graph launch runs the recorded launches again with those same arguments.
That is the property replay rests on: every argument of a one-token program is fixed when it is
built (the kernels read the token's position from device memory), so one capture serves every
later token.  Decoding with the emulated graphs must give the kernel-by-kernel logits bit for bit.
On a GPU, KVANT_CUDA_TESTS=device runs the model tests through real graphs.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from tests.test_cuda_launches import PROMPT, launch, q8_models  # noqa: F401  (fixtures: simulator only)

N_CTX = 16


class _SimGraph:
    def __init__(self, ops):
        self.ops = ops
        self.launched = 0

    def upload(self, core) -> None:
        pass

    def launch(self, core) -> None:
        self.launched += 1
        for kernel, grid, block, args in self.ops:
            kernel[grid, block](*args)


class _SimBuilder:
    """Records the simulator's kernel launches while building (as stream capture records them)."""

    def __init__(self) -> None:
        self.ops: list = []
        self._mp = pytest.MonkeyPatch()
        self.modes: list[str] = []

    def begin_building(self, mode: str = "relaxed"):
        from numba.cuda.simulator import kernel as sim

        self.modes.append(mode)
        ops = self.ops

        def record(k, *args):
            assert not k._device
            ops.append((k, k.grid_dim, k.block_dim, args))

        self._mp.setattr(sim.FakeCUDAKernel, "__call__", record)
        return self

    def end_building(self):
        self._mp.undo()
        return self

    def complete(self):
        return _SimGraph(self.ops)


class _SimCore:
    def __init__(self, fail: bool = False) -> None:
        self.builders: list[_SimBuilder] = []
        self.fail = fail

    def create_graph_builder(self):
        if self.fail:
            raise RuntimeError("no graphs here")
        b = _SimBuilder()
        self.builders.append(b)
        return b


def _greedy(m, n: int, cores=None) -> list[np.ndarray]:
    """The prompt, then n tokens one at a time; the GPU groups use emulated graphs when ``cores``."""
    from numba import cuda

    from engine.runtime.cuda.graphs import TokenGraphs

    net = m.net
    if cores is not None:
        for g, core in zip(net.gpu.decode, cores, strict=True):
            g.graphs = TokenGraphs(cuda.stream(), core)
    out = [net.forward(PROMPT, 0, last_only=True)]
    for _ in range(n):
        out.append(net.forward(np.array([int(out[-1].argmax())]), net.n_past, last_only=True))
    return out


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
@pytest.mark.parametrize("n_gpu_layers", [1, "all"])
def test_graph_replay_gives_the_kernel_by_kernel_logits(launch, q8_models, arch, n_gpu_layers):  # noqa: F811
    path = q8_models[arch]
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=n_gpu_layers) as m:
        assert all("simulator" in g.launch_mode for g in m.net.gpu.decode)
        want = _greedy(m, 5)
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=n_gpu_layers) as m:
        cores = [_SimCore() for _ in m.net.gpu.decode]
        got = _greedy(m, 5, cores)
        assert [g.launch_mode for g in m.net.gpu.decode] == ["CUDA graphs"] * len(cores)
        for g, core in zip(m.net.gpu.decode, cores, strict=True):
            # the first token kernel by kernel, then one capture (one program sequence: to the
            # hidden state, or to the logits) replayed for every later token
            assert len(core.builders) == 1 and core.builders[0].modes == ["relaxed"]
            graph = g.graphs._graphs[g.to_logits is not None]
            assert graph.launched == 4 and len(graph.ops) == g.launches(True)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failed_capture_falls_back_to_kernel_by_kernel(launch, q8_models):  # noqa: F811
    path = q8_models["gemma3"]
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        want = _greedy(m, 3)
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        with pytest.warns(RuntimeWarning, match="CUDA graph failed: RuntimeError: no graphs here"):
            got = _greedy(m, 3, [_SimCore(fail=True)])
        (g,) = m.net.gpu.decode
        assert g.graphs is None and g.launch_mode.startswith("kernel by kernel (CUDA graph failed")
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_when_graphs_are_not_used(monkeypatch):
    from engine.runtime.cuda.graphs import token_graphs

    assert token_graphs(simulator=True) == (None, "Numba's CUDA simulator has no graphs")
    monkeypatch.setenv("KVANT_CUDA_GRAPHS", "0")
    assert token_graphs(simulator=False) == (None, "KVANT_CUDA_GRAPHS=0")
