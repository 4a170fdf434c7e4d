"""Device memory for the GPU layers: uploads with accounting, out-of-memory as a typed error, and
the host wrappers that launch :mod:`.kernels` and :mod:`.qkernels` on device arrays.  Every weight
type the CPU kernels take (:data:`GPU_QTYPES`) has a CUDA mat-mul; the lookup tables some of them
read (IQ grids, ksigns, 4-bit values) are uploaded once per device (:meth:`DeviceArena.table`).

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
from engine.runtime.cuda import qkernels as QK
from engine.runtime.kernels import QWeight
from engine.runtime.kernels import qkernels as cpu_qk
from engine.runtime.kernels.qmatmul import QTYPES, VEC_DOT_TYPE

MIB = 1 << 20
# every weight type the CPU kernels take (engine.runtime.kernels.qmatmul.QTYPES)
GPU_QTYPES = frozenset(name for name, _, _ in QTYPES.values())


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
        self._tables: dict[str, Any] = {}

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

    def table(self, name: str):
        """A lookup table of the quantized kernels (:data:`_TABLES`), uploaded on first use."""
        if name not in self._tables:
            self._tables[name] = self.upload(_TABLES[name]())
        return self._tables[name]

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


# lookup tables the kernels read (host arrays, built on first use): IQ grids, ksigns, 4-bit values
# and placeholders for the table arguments a type does not use
_TABLES = {
    **{g: (lambda g=g: cpu_qk.tables()[g]) for g in ("iq2xxs", "iq2xs", "iq2s", "iq3xxs", "iq3s", "iq1s")},
    "ksigns": lambda: cpu_qk.tables()["ksigns"],
    "iq4nl": lambda: cpu_qk.KVALUES_IQ4NL,
    "mxfp4": lambda: cpu_qk.KVALUES_MXFP4,
    "no_grid": lambda: np.zeros((1, 8), np.int8),
    "no_ksigns": lambda: np.zeros(1, np.int32),
    "no_kv": lambda: np.zeros(16, np.int8),
}
# the (grid, ksigns, values) tables of each type of qkernels.mm_k32
_K32_TABLES = {
    "Q2_K": ("no_grid", "no_ksigns", "no_kv"),
    "Q3_K": ("no_grid", "no_ksigns", "no_kv"),
    "IQ4_XS": ("no_grid", "no_ksigns", "iq4nl"),
    "TQ1_0": ("no_grid", "no_ksigns", "no_kv"),
    "TQ2_0": ("no_grid", "no_ksigns", "no_kv"),
    "IQ2_XXS": ("iq2xxs", "ksigns", "no_kv"),
    "IQ2_XS": ("iq2xs", "ksigns", "no_kv"),
    "IQ2_S": ("iq2s", "no_ksigns", "no_kv"),
    "IQ3_XXS": ("iq3xxs", "ksigns", "no_kv"),
    "IQ3_S": ("iq3s", "no_ksigns", "no_kv"),
    "IQ1_S": ("iq1s", "no_ksigns", "no_kv"),
    "IQ1_M": ("iq1s", "no_ksigns", "no_kv"),
}


def _weight_tables(arena: DeviceArena, qtype: str) -> tuple[Any, ...]:
    if qtype in _K32_TABLES:
        return tuple(arena.table(t) for t in _K32_TABLES[qtype])
    if qtype in ("IQ4_NL", "MXFP4"):
        return (arena.table(qtype.lower().replace("_", "")),)
    return ()


@dataclass(frozen=True, eq=False)
class DeviceQWeight:
    """A :class:`QWeight` on the GPU: the same repacked fields, uploaded once, and the device's
    lookup tables its kernel reads (shared by every weight of the arena)."""

    qtype: str
    rows: int
    cols: int
    fields: tuple[Any, ...]
    tables: tuple[Any, ...] = ()

    @classmethod
    def upload(cls, arena: DeviceArena, w: QWeight) -> DeviceQWeight:
        if w.qtype not in GPU_QTYPES:
            raise NoGpuKernel(f"no CUDA kernel for {w.qtype} weights ({arena._what}) yet")
        fields = tuple(arena.upload(f) for f in w.fields)
        return cls(w.qtype, w.rows, w.cols, fields, _weight_tables(arena, w.qtype))

    @property
    def act_type(self) -> str:
        """The activation format its kernel takes (llama.cpp's vec_dot_type): Q8_0, Q8_1, Q8_K,
        F32, F16 or BF16."""
        return VEC_DOT_TYPE[self.qtype]

    def row_slice(self, r0: int, n: int) -> DeviceQWeight:
        """Rows ``r0 .. r0 + n`` as a weight of their own (views of the same device fields)."""
        return DeviceQWeight(
            self.qtype, n, self.cols, tuple(f[r0 : r0 + n] for f in self.fields), self.tables
        )


def upload_stacked(arena: DeviceArena, named: list[tuple[str, QWeight]]):
    """Upload weights of the same input width, those of one type concatenated by rows (one
    mat-mul launch computes them all).  Returns a weight per name (row views of its stack) and
    the stacks, each with its members' (name, first row)."""
    by_type: dict[str, list[tuple[str, QWeight]]] = {}
    for name, w in named:
        by_type.setdefault(w.qtype, []).append((name, w))
    views: dict[str, DeviceQWeight] = {}
    stacks: list[tuple[DeviceQWeight, list[tuple[str, int]]]] = []
    for qtype, members in by_type.items():
        ws = [w for _, w in members]
        if len(ws) == 1:
            stack = DeviceQWeight.upload(arena, ws[0])
        else:
            if len({w.cols for w in ws}) != 1:
                raise ValueError("stacked weights need the same number of columns")
            fields = tuple(
                np.concatenate(parts, axis=0) for parts in zip(*(w.fields for w in ws), strict=True)
            )
            stack = DeviceQWeight.upload(arena, QWeight(qtype, sum(w.rows for w in ws), ws[0].cols, fields))
        rows = []
        r0 = 0
        for name, w in members:
            views[name] = stack if len(ws) == 1 else stack.row_slice(r0, w.rows)
            rows.append((name, r0))
            r0 += w.rows
        stacks.append((stack, rows))
    return views, stacks


def _blocks(n: int, threads: int, launch: Launch) -> int:
    return max(1, min(launch.max_blocks, math.ceil(n / threads)))


def act_buffers(empty, act_type: str, n: int, k: int, x=None) -> tuple[Any, ...]:
    """The arrays (from ``empty(shape, dtype)``) that :func:`quantize_call` fills for a weight
    whose activations are ``act_type``: see :func:`quantize`; F32 is ``x`` itself."""
    if act_type == "F32":
        return (x,)
    if act_type in ("F16", "BF16"):
        return (empty((n, k), np.float32),)
    q = empty((n, k), np.int8)
    if act_type == "Q8_K":
        return q, empty((n, k // 256), np.float32), empty((n, k // 16), np.int32)
    if act_type == "Q8_1":
        return q, empty((n, k // 32), np.float32), empty((n, k // 32), np.float32)
    return q, empty((n, k // 32), np.float32)


def quantize_call(launch: Launch, act_type: str, x, act):
    """(kernel, grid, block, args) filling ``act`` (:func:`act_buffers`) from x (n, K) f32, or None
    for F32 activations (x itself)."""
    n, k = x.shape
    threads = launch.elem_threads
    if act_type == "F32":
        return None
    if act_type in ("F16", "BF16"):
        return QK.round_act, _blocks(n * k, threads, launch), threads, (x, act[0], QK.FLOAT_KINDS[act_type])
    if act_type == "Q8_K":
        return K.quant_q8_k, _blocks(n * (k // 256), threads, launch), threads, (x, *act)
    kernel = QK.quant_q8_1 if act_type == "Q8_1" else K.quant_q8_0
    return kernel, _blocks(n * (k // 32), threads, launch), threads, (x, *act)


def quantize(launch: Launch, act_type: str, x):
    """Convert device activations x (n, K) f32 for a weight whose activations are ``act_type``:
    Q8_0 (codes, scales), Q8_1 (codes, scales, sums), Q8_K (codes, scales, bsums), or a 1-tuple of
    f32 activations for float weights (x itself for F32, rounded to fp16 / bf16 values)."""
    n, k = x.shape
    act = act_buffers(cuda.device_array, act_type, n, k, x)
    call = quantize_call(launch, act_type, x, act)
    if call is not None:
        kernel, grid, block, args = call
        kernel[grid, block](*args)
    return act


def matmul_call(launch: Launch, w: DeviceQWeight, act, out):
    """(kernel, grid, block, args) of ``x @ W.T`` into out (n, rows) f32, from activations
    quantized by :func:`quantize` with ``w.act_type``."""
    n = act[0].shape[0]
    grid = (_blocks(w.rows, launch.rows_per_block, launch), math.ceil(n / K.TT))
    block = (launch.lanes, launch.rows_per_block)
    f = w.fields
    if w.qtype == "Q8_0":
        return K.mm_q8_0, grid, block, (f[0], f[1], act[0], act[1], out)
    if w.qtype == "Q4_0":
        return K.mm_q4_0, grid, block, (f[0], f[1], act[0], act[1], out)
    if w.qtype == "Q5_0":
        return K.mm_q5_0, grid, block, (f[0], f[1], f[2], act[0], act[1], out)
    if w.qtype == "Q4_K":
        return K.mm_qk, grid, block, (f[0], f[1], f[2], f[3], f[4], f[0], False, act[0], act[1], act[2], out)
    if w.qtype == "Q5_K":
        return K.mm_qk, grid, block, (f[0], f[1], f[2], f[3], f[4], f[5], True, act[0], act[1], act[2], out)
    if w.qtype == "Q6_K":
        return K.mm_q6_k, grid, block, (f[0], f[1], f[2], f[3], act[0], act[1], out)
    if w.qtype in QK.K32_KINDS:
        # code fields in repack order, then the f32 scales (Q2_K: d and dmin); f[0] fills the
        # field arguments a type does not have
        nc = 3 if w.qtype == "Q2_K" else len(f) - 1
        codes = (*f[:nc], *(f[0],) * (4 - nc))
        d, dmin = f[nc], f[-1]
        return QK.mm_k32, grid, block, (QK.K32_KINDS[w.qtype], *codes, d, dmin, *w.tables, *act, out)
    if w.qtype in QK.FLOAT_KINDS:
        return QK.mm_float, grid, block, (f[0], QK.FLOAT_KINDS[w.qtype], act[0], out)
    if w.qtype == "Q4_1":
        return QK.mm_q4_1, grid, block, (f[0], f[0], False, f[1], f[2], *act, out)
    if w.qtype == "Q5_1":
        return QK.mm_q4_1, grid, block, (f[0], f[1], True, f[2], f[3], *act, out)
    if w.qtype in ("IQ4_NL", "MXFP4"):
        return QK.mm_lut4, grid, block, (f[0], f[1], w.tables[0], act[0], act[1], out)
    raise ModelError(f"no CUDA kernel for {w.qtype}")


def matmul(launch: Launch, w: DeviceQWeight, act, out=None):
    """``x @ W.T`` (n, rows) f32 on the quantized blocks, from activations quantized by
    :func:`quantize` with ``w.act_type``."""
    if out is None:
        out = cuda.device_array((act[0].shape[0], w.rows), np.float32)
    kernel, grid, block, args = matmul_call(launch, w, act, out)
    kernel[grid, block](*args)
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


TOP_BLOCKS = 64  # first-pass blocks of the top-k pick (each scans 1/64 of the logits)
TOP_MAX = 64  # the largest k picked on the device (llama.cpp's default top-k is 40)


def top_buffers(empty, launch: Launch) -> tuple[Any, ...]:
    """Scratch (per-block values, indices, NaN flags) and result of :func:`top_calls`: one int32
    vector, so one copy brings back the flag, the k indices and (as f32 bits) the k values."""
    nb = min(TOP_BLOCKS, launch.max_blocks)
    pv, pi = empty((nb, TOP_MAX), np.float32), empty((nb, TOP_MAX), np.int32)
    return pv, pi, empty((nb,), np.int32), empty((1 + 2 * TOP_MAX,), np.int32)


def top_calls(launch: Launch, x, k: int, bufs) -> list[tuple[Any, Any, Any, tuple[Any, ...]]]:
    """The two launches of the top-``k`` pick over the logits ``x`` (1, n) into ``bufs[3]``:
    see :func:`top_result`."""
    if not 1 <= k <= TOP_MAX:
        raise ValueError(f"the device picks 1 to {TOP_MAX} best logits, not {k}")
    pv, pi, pb, out = bufs
    threads = launch.elem_threads  # a power of two (the reductions halve it)
    blocks = min(pv.shape[0], _blocks(x.shape[1], threads, launch))
    pv, pi, pb = pv[:blocks], pi[:blocks], pb[:blocks]
    vals = out[1 + TOP_MAX :].view(np.float32)
    first = (K.top_partial, blocks, threads, (x, np.int32(k), pv, pi, pb))
    return [first, (K.top_final, 1, threads, (pv, pi, pb, np.int32(k), out, vals))]


def top_result(host: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids int64, logits f32) of the k best logits, best first (larger logit, then smaller id),
    from the copied result of :func:`top_calls`; ``None`` where the host sampler must see the
    logits (a NaN, +inf, or only -inf: it rejects them)."""
    if host[0] != 0:
        return None
    return host[1 : 1 + k].astype(np.int64), host[1 + TOP_MAX : 1 + TOP_MAX + k].view(np.float32).copy()


def top_pick(launch: Launch, x, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`top_result` of the device logits ``x`` (1, n), computed there."""
    bufs = top_buffers(cuda.device_array, launch)
    for kernel, grid, block, args in top_calls(launch, x, k, bufs):
        kernel[grid, block](*args)
    return top_result(bufs[3].copy_to_host(), k)


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
