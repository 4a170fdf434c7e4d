"""The one-token (decode) path of the GPU layers, built once per model and device: every device
buffer of a token (hidden state, mat-mul inputs and their activation codes, q‖k‖v, attention,
gate‖up, logits) is allocated with the weights, and every launch is configured once, so a decoded
token costs only the launches themselves (no allocation, no launch-shape arithmetic, no dispatch
on weight types).  The layer graphs that fill a :class:`Program` live in :mod:`.gemma3` and
:mod:`.decoder`; the fused kernels in :mod:`.fused_kernels`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import cuda

from engine.runtime.cuda import device as D
from engine.runtime.cuda import fused_kernels as FK
from engine.runtime.cuda import kernels as K
from engine.runtime.cuda.graphs import TokenGraphs, token_graphs
from engine.runtime.sampling import TopLogits


def bind(arena: D.DeviceArena, kernel, grid, block) -> Callable[..., None]:
    """``kernel[grid, block]``, configured once.  numba-cuda builds a launcher (and checks its
    occupancy) at each indexing, so on a GPU the configured launcher is kept; the simulator's
    kernels keep their configuration in the kernel object itself, so there it is set again before
    each call."""
    if arena.simulator:
        return functools.partial(_configured, kernel, grid, block)
    return kernel[grid, block]


def _configured(kernel, grid, block, *args) -> None:
    kernel[grid, block](*args)


class Program:
    """Launches and their arguments, run in order.  Every argument is fixed when the program is
    built (the token's position is read from device memory by the kernels that need it), so the
    same launches can be captured once into a CUDA graph and replayed for every token."""

    def __init__(self, arena: D.DeviceArena) -> None:
        self.arena = arena
        self.ops: list[tuple[Callable[..., None], Any, Any, Any, tuple[Any, ...]]] = []

    def add(self, kernel, grid, block, args: tuple[Any, ...]) -> None:
        self.ops.append((bind(self.arena, kernel, grid, block), kernel, grid, block, tuple(args)))

    def add_call(self, call) -> None:
        """A (kernel, grid, block, args) of :func:`device.matmul_call` / ``quantize_call``."""
        if call is not None:
            kernel, grid, block, args = call
            self.add(kernel, grid, block, args)

    def run(self, stream: Any = None) -> None:
        """Launch every op: on the default stream with the launchers configured once, or on
        ``stream`` (a numba stream, or the graph builder a capture records into)."""
        if stream is None:
            for fn, _, _, _, args in self.ops:
                fn(*args)
        else:
            for _, kernel, grid, block, args in self.ops:
                kernel[grid, block, stream](*args)

    def __len__(self) -> int:
        return len(self.ops)


class Codes:
    """A mat-mul input row (1, k) f32 on the device and the activations of the weights that read
    it (:func:`device.act_buffers`): a fused kernel writes the row and one code type
    (:meth:`fused`), a quantization launch each of the others (:meth:`add_rest`)."""

    def __init__(self, arena: D.DeviceArena, row, act_types: Iterable[str]) -> None:
        self.row = row
        k = row.shape[1]
        self.acts = {t: D.act_buffers(arena.empty, t, 1, k, row) for t in dict.fromkeys(act_types)}
        # stand-ins for the code arrays a kernel call does not use
        self._no_q = arena.empty((1, 1), np.int8)
        self._no_f = arena.empty((1, 1), np.float32)
        self._no_i = arena.empty((1, 1), np.int32)

    @staticmethod
    def fused_type(act_types: Iterable[str]) -> str | None:
        """The code type a fused kernel writes: the first of ``act_types`` with codes."""
        return next((t for t in act_types if t in FK.CODE_KINDS), None)

    def fused(self, act_types: Iterable[str]) -> tuple[Any, ...]:
        """(kind, q, d, s, bs) arguments of a fused kernel for the first code type."""
        t = self.fused_type(act_types)
        if t is None:
            return FK.NO_CODES, self._no_q, self._no_f, self._no_f, self._no_i
        a = self.acts[t]
        return (
            FK.CODE_KINDS[t],
            a[0],
            a[1],
            a[2] if t == "Q8_1" else self._no_f,
            a[2] if t == "Q8_K" else self._no_i,
        )

    def add_rest(self, prog: Program, act_types: Iterable[str], fused: bool = True) -> None:
        """Quantization launches for the types of ``act_types`` a fused kernel did not write."""
        done = self.fused_type(act_types) if fused else None
        for t in dict.fromkeys(act_types):
            if t != done:
                prog.add_call(D.quantize_call(prog.arena.launch, t, self.row, self.acts[t]))


Stacks = list[tuple[D.DeviceQWeight, list[tuple[str, int]]]]


def stack_offsets(stacks: Stacks) -> tuple[list[int], dict[str, int]]:
    """Where each stack's rows, and each member's, start in the flat output of a stack list."""
    bases = []
    offsets = {}
    base = 0
    for stack, members in stacks:
        bases.append(base)
        for name, r0 in members:
            offsets[name] = base + r0
        base += stack.rows
    return bases, offsets


def add_stack_matmuls(prog: Program, stacks: Stacks, codes: Codes, flat) -> dict[str, int]:
    """One mat-mul launch per stack into its part of the flat device output; the members' offsets."""
    bases, offsets = stack_offsets(stacks)
    for (stack, _), base in zip(stacks, bases, strict=True):
        out = flat[base : base + stack.rows].reshape(1, stack.rows)
        prog.add_call(D.matmul_call(prog.arena.launch, stack, codes.acts[stack.act_type], out))
    return offsets


def add_residual(prog: Program, mode: int, a, bias, w1, x, w2, eps, codes: Codes, act_types) -> None:
    """:func:`fused_kernels.residual_norm_quant` (and the quantizations it does not fuse)."""
    lc = prog.arena.launch
    prog.add(
        FK.residual_norm_quant,
        D._blocks(x.shape[0], 1, lc),
        lc.row_threads,
        (a, bias, w1, x, w2, np.float32(eps), mode, codes.row, *codes.fused(act_types)),
    )
    codes.add_rest(prog, act_types)


def add_attention(
    prog: Program, q, cache, window: int, round_f16: bool, scores, codes: Codes, act_types
) -> None:
    """kernels.attention of one query over the slots filled so far (``cache``: keys, values, slot
    positions, query position) into ``codes.row``'s (1, H, D) view, with the codes of the first of
    ``act_types`` (:func:`fused_kernels.attention_quant`) when a head holds whole code blocks;
    then the quantizations it does not fuse."""
    lc = prog.arena.launch
    kc, vc, sp, qpos = cache
    nh, hd = q.shape[1], q.shape[2]
    out = codes.row.reshape(q.shape)
    t = Codes.fused_type(act_types)
    fuse = t is not None and hd % (256 if t == "Q8_K" else 32) == 0
    grid = D._blocks(nh, 1, lc)
    args = (q, kc, vc, sp, -1, qpos, window, round_f16, scores, out)  # -1: the slots filled at qpos
    if fuse:
        prog.add(FK.attention_quant, grid, lc.row_threads, (*args, codes.row, *codes.fused(act_types)))
    else:
        prog.add(K.attention, grid, lc.row_threads, args)
    codes.add_rest(prog, act_types, fused=fuse)


def add_glu(prog: Program, gu, g_off: int, u_off: int, gate: int, codes: Codes, act_types) -> None:
    """:func:`fused_kernels.glu_quant` (and the quantizations it does not fuse)."""
    lc = prog.arena.launch
    kind = codes.fused(act_types)
    chunk = FK.glu_chunk(lc.elem_threads, kind[0])
    grid = D._blocks(codes.row.shape[1], chunk, lc)
    prog.add(FK.glu_quant, grid, lc.elem_threads, (gu, g_off, u_off, gate, codes.row, *kind))
    codes.add_rest(prog, act_types)


def groups(layers: list[Any]) -> list[tuple[D.DeviceArena, list[Any]]]:
    """Consecutive GPU layers on the same device, with their device."""
    out: list[tuple[D.DeviceArena, list[Any]]] = []
    for L in layers:
        if out and out[-1][0] is L.arena:
            out[-1][1].append(L)
        else:
            out.append((L.arena, [L]))
    return out


def _pinned(shape, dtype) -> np.ndarray:
    """A page-locked host array, or a plain one where the driver refuses (a locked-memory limit)."""
    try:
        return cuda.pinned_array(shape, dtype)
    except Exception:
        return np.empty(shape, dtype)


HIDDEN, LOGITS = 0, 1  # what a token's run through a device ends with (graph keys; ("top", k) too)


@dataclass(eq=False)
class Group:
    """The one-token programs of the layers on one device: ``body`` runs them from the hidden
    state in ``x`` at the position in ``qpos`` (device memory); then ``to_hidden`` finishes the
    residual stream in ``x`` (for the next device or the CPU), or ``to_logits`` (on the device of
    the output layer) fills ``logits``, after which a top-k pick can take the k best logits there
    (:func:`device.top_calls`), so that a few hundred bytes come back instead of the logits.  On a
    GPU the sequences run as CUDA graphs (:mod:`.graphs`), else kernel by kernel; ``launch_mode``
    says which, and why."""

    arena: D.DeviceArena
    x: Any
    qpos: Any
    body: Program
    to_hidden: Program
    to_logits: Program | None
    logits: Any
    graphs: TokenGraphs | None = field(default=None, init=False)
    why_no_graphs: str = field(default="", init=False)
    top: Any = field(default=None, init=False)  # the top-k pick's buffers (device.top_buffers)
    _picks: dict[int, Program] = field(default_factory=dict, init=False)
    _host: dict[int, np.ndarray] = field(default_factory=dict, init=False)  # staging, by id(device array)

    def __post_init__(self) -> None:
        with self.arena.on():
            self.graphs, self.why_no_graphs = token_graphs(self.arena.simulator)
            if self.to_logits is not None:
                with self.arena.loading("the top-k pick"):
                    self.top = D.top_buffers(self.arena.empty, self.arena.launch)
            # page-locked host copies of what moves per token, so that the copies are asynchronous
            # on the token's stream (from pageable memory the driver copies synchronously, through
            # a bounce buffer) and the host waits once per token
            for dev in (self.x, self.qpos, self.logits, None if self.top is None else self.top[3]):
                if dev is not None:
                    self._host[id(dev)] = _pinned(dev.shape, dev.dtype)

    @property
    def launch_mode(self) -> str:
        return "CUDA graphs" if self.graphs is not None else f"kernel by kernel ({self.why_no_graphs})"

    def _pick(self, k: int) -> Program:
        """The launches of the top-``k`` pick (built on first use; no allocation)."""
        prog = self._picks.get(k)
        if prog is None:
            prog = Program(self.arena)
            for kernel, grid, block, args in D.top_calls(self.arena.launch, self.logits, k, self.top):
                prog.add(kernel, grid, block, args)
            self._picks[k] = prog
        return prog

    def _ends(self, want_logits: bool, top_k: int) -> tuple[Any, tuple[Program, ...], Any]:
        """(graph key, programs, device result) of a token's run."""
        if not want_logits or self.to_logits is None:
            return HIDDEN, (self.body, self.to_hidden), self.x
        if top_k:
            return ("top", top_k), (self.body, self.to_logits, self._pick(top_k)), self.top[3]
        return LOGITS, (self.body, self.to_logits), self.logits

    def run(self, x: np.ndarray, pos: int, want_logits: bool, top_k: int = 0) -> tuple[Any, bool]:
        """The token's hidden state ``x`` at ``pos`` through this device's layers: (hidden state,
        False), or (logits, True) on the device of the output layer when ``want_logits``; with
        ``top_k`` there, (:class:`~engine.runtime.sampling.TopLogits`, True), or the logits when
        the host sampler has to see them (a NaN, +inf or only -inf, which it rejects)."""
        key, programs, result = self._ends(want_logits, top_k)
        hx, hp, out = self._host[id(self.x)], self._host[id(self.qpos)], self._host[id(result)]
        hx[...] = np.asarray(x, np.float32).reshape(hx.shape)
        hp[0] = pos
        with self.arena.on():
            done = False
            g = self.graphs
            if g is not None and g.warm(key):
                try:
                    self.x.copy_to_device(hx, stream=g.stream)
                    self.qpos.copy_to_device(hp, stream=g.stream)
                    g.launch(key, programs)
                    result.copy_to_host(out, stream=g.stream)
                    g.stream.synchronize()
                    done = True
                except Exception as err:  # capture or replay failed: kernel by kernel from now on
                    self.graphs = None
                    self.why_no_graphs = f"CUDA graph failed: {type(err).__name__}: {err}"
                    msg = f"GPU {self.arena.index}: {self.why_no_graphs}"
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)
            if not done:
                # (again from the inputs: the programs rewrite x, and the KV slot of pos, identically)
                self.x.copy_to_device(hx)
                self.qpos.copy_to_device(hp)
                for p in programs:
                    p.run()
                result.copy_to_host(out)
            if key == HIDDEN:
                return out.copy(), False  # (the staging buffers serve the next token)
            if key == LOGITS:
                return out.copy(), True
            top = D.top_result(out, top_k)
            if top is None:
                return self.logits.copy_to_host(), True
            return TopLogits(top[0], top[1], self.logits.shape[1]), True

    def launches(self, want_logits: bool, top_k: int = 0) -> int:
        """Kernel launches of one token through this device's layers (in its graph, if any)."""
        return sum(len(p) for p in self._ends(want_logits, top_k)[1])


def launches_per_token(decode: list[Group], want_logits: bool = True, top_k: int = 0) -> int:
    """Kernel launches of one decoded token through every device of ``decode``."""
    return sum(g.launches(want_logits, top_k) for g in decode)


def forward_one(
    decode: list[Group], x: np.ndarray, pos: int, want_logits: bool, top_k: int = 0
) -> tuple[Any, bool]:
    """One token through the GPU layers: (logits, True) or (hidden state, False), as ``forward``;
    with ``top_k``, (TopLogits, True) where the output layer's device picked them (:meth:`Group.run`)."""
    for g in decode:
        x, done = g.run(x, pos, want_logits, top_k)
        if done:
            return x, True
    return x, False
