"""Device memory for the GPU layers: uploads with accounting, out-of-memory as a typed error, and
the host wrappers that launch :mod:`.kernels` on device arrays.

:class:`DeviceArena` owns every allocation of one GPU (weights, KV cache, scratch).  It counts
bytes, turns CUDA's out-of-memory error into :class:`GpuOutOfMemory` with the numbers, and can
enforce a limit (the simulator's pretend VRAM, or a test's).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda, njit

from engine.errors import ModelError
from engine.runtime.cuda import kernels as K
from engine.runtime.kernels import QWeight
from engine.runtime.kernels.qmatmul import ACT_Q8_K

MIB = 1 << 20
GPU_QTYPES = frozenset({"Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"})


class NoGpuKernel(ModelError):
    """A weight type the CUDA kernels do not handle (the model stays on the CPU)."""


class GpuOutOfMemory(ModelError):
    """A GPU ran out of memory while loading; ``needed``/``free`` in bytes."""

    def __init__(self, device: int, needed: int, allocated: int, free: int | None, what: str) -> None:
        self.device = device
        self.needed = needed
        self.allocated = allocated
        self.free = free
        free_s = "unknown" if free is None else f"{free / MIB:.0f} MiB"
        super().__init__(
            f"GPU {device} ran out of memory loading {what}: {needed / MIB:.1f} MiB more were needed "
            f"after {allocated / MIB:.0f} MiB already in use by Kvant (free before loading: {free_s})"
        )


@dataclass(frozen=True)
class Launch:
    """Launch shapes: lanes per mat-mul row, rows per block, threads for per-row kernels."""

    lanes: int
    rows_per_block: int
    row_threads: int
    elem_threads: int
    max_blocks: int


GPU_LAUNCH = Launch(lanes=32, rows_per_block=4, row_threads=128, elem_threads=256, max_blocks=1 << 16)
# The simulator runs each thread as a Python thread (and makes barriers costly): one small block,
# one lane per row, same grid-stride code.  The kernel tests also run the lane reductions with
# SIM_REDUCE_LAUNCH.
SIM_LAUNCH = Launch(lanes=1, rows_per_block=4, row_threads=1, elem_threads=1, max_blocks=1)
SIM_REDUCE_LAUNCH = Launch(lanes=2, rows_per_block=2, row_threads=2, elem_threads=2, max_blocks=1)


def _is_oom(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".upper()
    return "OUT_OF_MEMORY" in text or "OUT OF MEMORY" in text or getattr(err, "code", None) == 2


class DeviceArena:
    """Allocations on CUDA device ``index`` with byte accounting and an optional limit."""

    def __init__(self, index: int, limit_bytes: int | None, simulator: bool, free_bytes: int | None) -> None:
        self.index = index
        self.limit = limit_bytes
        self.simulator = simulator
        self.free_at_start = free_bytes
        self.allocated = 0
        self.launch = SIM_LAUNCH if simulator else GPU_LAUNCH
        self._what = "weights"

    @contextlib.contextmanager
    def on(self):
        """Make this device current (a no-op on the simulator's single device)."""
        if self.simulator:
            yield
        else:
            with cuda.gpus[self.index]:
                yield

    @contextlib.contextmanager
    def loading(self, what: str):
        old, self._what = self._what, what
        try:
            yield
        finally:
            self._what = old

    def _oom(self, nbytes: int) -> GpuOutOfMemory:
        return GpuOutOfMemory(self.index, nbytes, self.allocated, self.free_at_start, self._what)

    def _reserve(self, nbytes: int) -> None:
        if self.limit is not None and self.allocated + nbytes > self.limit:
            raise self._oom(nbytes)

    def upload(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        self._reserve(a.nbytes)
        try:
            d = cuda.to_device(a)
        except Exception as err:
            if _is_oom(err):
                raise self._oom(a.nbytes) from err
            raise
        self.allocated += a.nbytes
        return d

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._reserve(nbytes)
        try:
            d = cuda.device_array(shape, dtype)
        except Exception as err:
            if _is_oom(err):
                raise self._oom(nbytes) from err
            raise
        self.allocated += nbytes
        return d


# ============================================================================ device weights


@dataclass(frozen=True, eq=False)
class DeviceQWeight:
    """A :class:`QWeight` on the GPU: the same repacked fields, uploaded once."""

    qtype: str
    rows: int
    cols: int
    fields: tuple[Any, ...]

    @classmethod
    def upload(cls, arena: DeviceArena, w: QWeight) -> DeviceQWeight:
        if w.qtype not in GPU_QTYPES:
            raise NoGpuKernel(f"no CUDA kernel for {w.qtype} weights ({arena._what}) yet")
        return cls(w.qtype, w.rows, w.cols, tuple(arena.upload(f) for f in w.fields))

    @property
    def act_type(self) -> str:
        return "Q8_K" if self.qtype in ACT_Q8_K else "Q8_0"


_NO_QH = np.zeros((1, 1), np.uint8)


def _blocks(n: int, threads: int, launch: Launch) -> int:
    return max(1, min(launch.max_blocks, math.ceil(n / threads)))


def quantize(launch: Launch, act_type: str, x):
    """Quantize device activations x (n, K) f32 for a weight whose activations are ``act_type``."""
    n, k = x.shape
    q = cuda.device_array((n, k), np.int8)
    if act_type == "Q8_K":
        d = cuda.device_array((n, k // 256), np.float32)
        bs = cuda.device_array((n, k // 16), np.int32)
        nb = n * (k // 256)
        K.quant_q8_k[_blocks(nb, launch.elem_threads, launch), launch.elem_threads](x, q, d, bs)
        return q, d, bs
    d = cuda.device_array((n, k // 32), np.float32)
    nb = n * (k // 32)
    K.quant_q8_0[_blocks(nb, launch.elem_threads, launch), launch.elem_threads](x, q, d)
    return q, d


def matmul(launch: Launch, w: DeviceQWeight, act, out=None):
    """``x @ W.T`` (n, rows) f32 on the quantized blocks, from activations quantized by
    :func:`quantize` with ``w.act_type``."""
    n = act[0].shape[0]
    if out is None:
        out = cuda.device_array((n, w.rows), np.float32)
    grid = (_blocks(w.rows, launch.rows_per_block, launch), math.ceil(n / K.TT))
    block = (launch.lanes, launch.rows_per_block)
    f = w.fields
    if w.qtype == "Q8_0":
        K.mm_q8_0[grid, block](f[0], f[1], act[0], act[1], out)
    elif w.qtype == "Q4_0":
        K.mm_q4_0[grid, block](f[0], f[1], act[0], act[1], out)
    elif w.qtype == "Q5_0":
        K.mm_q5_0[grid, block](f[0], f[1], f[2], act[0], act[1], out)
    elif w.qtype == "Q4_K":
        K.mm_qk[grid, block](f[0], f[1], f[2], f[3], f[4], f[0], False, act[0], act[1], act[2], out)
    elif w.qtype == "Q5_K":
        K.mm_qk[grid, block](f[0], f[1], f[2], f[3], f[4], f[5], True, act[0], act[1], act[2], out)
    elif w.qtype == "Q6_K":
        K.mm_q6_k[grid, block](f[0], f[1], f[2], f[3], act[0], act[1], out)
    else:
        raise ModelError(f"no CUDA kernel for {w.qtype}")
    return out


def rmsnorm(launch: Launch, x, w, eps, res=None, out=None):
    rows, n = x.shape
    if out is None:
        out = cuda.device_array((rows, n), np.float32)
    if res is None:
        res = cuda.device_array((0, n), np.float32)  # no residual (a size-0 array allocates nothing)
    K.rmsnorm_rows[_blocks(rows, 1, launch), launch.row_threads](x, w, np.float32(eps), out, res)
    return out


@njit(cache=True)
def _theta_scale(base, d):
    # exactly engine.runtime.kernels.ops.rope_neox's expression (Numba, float32 pow)
    return np.float32(math.pow(np.float32(base), np.float32(-2.0) / np.float32(d)))


def rope(launch: Launch, x, positions, base, freq_scale, scale=1.0, round_f16=False):
    n, _, d = x.shape
    ts = _theta_scale(np.float32(base), d)
    total = n * (d // 2)
    K.rope_neox[_blocks(total, launch.elem_threads, launch), launch.elem_threads](
        x, positions, ts, np.float64(freq_scale), np.float32(scale), bool(round_f16)
    )
    return x


def geglu(launch: Launch, gate, up, fp16_table=True):
    out = cuda.device_array(gate.shape, np.float32)
    total = gate.shape[0] * gate.shape[1]
    K.geglu[_blocks(total, launch.elem_threads, launch), launch.elem_threads](gate, up, out, bool(fp16_table))
    return out


def softcap(launch: Launch, x, c):
    total = x.shape[0] * x.shape[1]
    K.softcap[_blocks(total, launch.elem_threads, launch), launch.elem_threads](x, np.float32(c))
    return x


def argmax(launch: Launch, x):
    rows = x.shape[0]
    out = cuda.device_array(rows, np.int64)
    threads = 1 << max(0, (launch.row_threads - 1).bit_length() - 1) if launch.row_threads > 1 else 1
    K.argmax_rows[_blocks(rows, 1, launch), threads](x, out)
    return out


SCORES_MAX_FLOATS = 1 << 23  # attention scratch per launch (32 MiB); queries are chunked to fit


def attention(launch: Launch, q, kc, vc, slot_pos, ns: int, qpos, window: int, round_f16: bool):
    """q (n, H, D) device f32 (pre-scaled) over the first ``ns`` slots of an fp16-bits cache."""
    n, nh, d = q.shape
    out = cuda.device_array((n, nh, d), np.float32)
    chunk = max(1, min(n, SCORES_MAX_FLOATS // max(1, nh * ns)))
    scores = cuda.device_array((chunk * nh, max(1, ns)), np.float32)
    for t0 in range(0, n, chunk):
        t1 = min(n, t0 + chunk)
        nq = (t1 - t0) * nh
        K.attention[_blocks(nq, 1, launch), launch.row_threads](
            q[t0:t1], kc, vc, slot_pos, ns, qpos[t0:t1], window, bool(round_f16), scores, out[t0:t1]
        )
    return out
