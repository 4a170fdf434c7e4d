"""Quantize and dequantize throughput per type: Kvant (1 and all threads), gguf-py, llama.cpp."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.bench import llamacpp
from engine.progress import CancelToken, Progress

# gguf-py 0.19 quantizes only these (reference: quant-formats.md)
GGUF_PY_QUANTIZES = frozenset({"BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0", "MXFP4"})


@dataclass(frozen=True, slots=True)
class QuantBenchRow:
    type: str
    imatrix: bool
    kvant_1t_mb_s: float
    kvant_nt_mb_s: float
    gguf_py_mb_s: float | None
    llamacpp_1t_mb_s: float | None
    bit_exact: bool | None  # against llama.cpp, when it ran
    dequant_kvant_nt_melem_s: float
    dequant_gguf_py_melem_s: float | None
    # the same 1-thread runs timed by process CPU time (what a busy machine disturbs least)
    kvant_1t_cpu_mb_s: float | None = None
    llamacpp_1t_cpu_mb_s: float | None = None
    # dequantize at 1 thread each, interleaved, by process CPU time: Kvant and llama.cpp's to_float
    dequant_kvant_1t_cpu_melem_s: float | None = None
    dequant_llamacpp_1t_cpu_melem_s: float | None = None
    dequant_bit_exact: bool | None = None  # llama.cpp's floats, bit for bit, when it ran

    @property
    def vs_llamacpp(self) -> float | None:
        """Kvant on all threads vs llama.cpp's single-threaded call (the issue's target)."""
        return None if self.llamacpp_1t_mb_s is None else self.kvant_nt_mb_s / self.llamacpp_1t_mb_s

    @property
    def vs_llamacpp_1t(self) -> float | None:
        """1 thread vs 1 thread, from process CPU time of interleaved runs."""
        if self.llamacpp_1t_cpu_mb_s is None or self.kvant_1t_cpu_mb_s is None:
            return None
        return self.kvant_1t_cpu_mb_s / self.llamacpp_1t_cpu_mb_s

    @property
    def dequant_vs_llamacpp_1t(self) -> float | None:
        """Dequantize, 1 thread vs 1 thread, from process CPU time of interleaved runs."""
        if self.dequant_llamacpp_1t_cpu_melem_s is None or self.dequant_kvant_1t_cpu_melem_s is None:
            return None
        return self.dequant_kvant_1t_cpu_melem_s / self.dequant_llamacpp_1t_cpu_melem_s

    @property
    def vs_gguf_py(self) -> float | None:
        return None if self.gguf_py_mb_s is None else self.kvant_nt_mb_s / self.gguf_py_mb_s


@dataclass(frozen=True, slots=True)
class QuantBench:
    rows: int
    cols: int
    threads: int
    repeat: int
    llamacpp_version: str | None
    results: list[QuantBenchRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["results"] = [
            {
                **asdict(r),
                "ratio_vs_llamacpp": r.vs_llamacpp,
                "ratio_1t_vs_llamacpp": r.vs_llamacpp_1t,
                "ratio_vs_gguf_py": r.vs_gguf_py,
                "dequant_ratio_1t_vs_llamacpp": r.dequant_vs_llamacpp_1t,
            }
            for r in self.results
        ]
        return d


def _best(fn: Callable[[], Any], repeat: int, min_s: float = 0.3, max_repeat: int = 100) -> float:
    """Best wall time of ``repeat`` calls after a warm-up, with more calls (up to ``max_repeat``)
    until ``min_s`` has passed: a 3 ms call gets ~100 tries, so a passing slow phase of the
    machine (fresh output pages in this VM: ~10x for several calls in a row) does not decide it."""
    fn()  # warm-up (compiles or loads the kernel cache)
    best = float("inf")
    start = time.perf_counter()
    n = 0
    while n < repeat or (time.perf_counter() - start < min_s and n < max_repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def _best_interleaved(fns: list[Callable[[], Any]], repeat: int) -> list[tuple[float, float]]:
    """Run the functions in turn ``repeat`` times (after one warm-up each): per function the best
    wall time and the best process CPU time.  Interleaving exposes them to the same load."""
    for fn in fns:
        fn()
    best = [(float("inf"), float("inf")) for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[i] = (min(best[i][0], w), min(best[i][1], c))
    return best


def _warm_memory(nbytes: int = 256 << 20, times: int = 3) -> None:
    """Touch and free large buffers once.  A fresh process's first large allocations fault their
    pages in far more slowly (the OS assembling huge pages: 34, 8, 8, 17 ms for 3 ms calls, measured),
    which otherwise lands on whichever type is measured first."""
    for _ in range(times):
        b = np.empty(nbytes, np.uint8)
        b.fill(0)
        del b


def bench_quant(
    types: list[str] | None = None,
    *,
    rows: int = 4096,
    cols: int = 4096,
    repeat: int = 3,
    cancel: CancelToken | None = None,
) -> Iterator[Progress]:
    """Measure every type on the same random rows × cols matrix; returns a :class:`QuantBench`."""
    import gguf
    import numba

    import engine.quant as Q

    support = {s.name: s for s in Q.supported()}
    types = types or [s.name for s in support.values() if s.can_quantize and s.name != "F32"]
    version = llamacpp.available()
    lib = llamacpp.load_ggml() if version else None
    threads = numba.config.NUMBA_NUM_THREADS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    im = (rng.gamma(1.5, 1.0, cols) + 1e-3).astype(np.float32)
    mb = x.nbytes / 1e6
    result = QuantBench(rows, cols, threads, repeat, version)
    _warm_memory()
    for i, t in enumerate(types):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield Progress("bench quant", i, len(types), t)
        s = support[t]
        variants = [True] if s.needs_imatrix else ([False, True] if s.uses_imatrix else [False])
        for with_im in variants:
            imat = im if with_im else None
            ours = Q.quantize(x, t, imat)
            numba.set_num_threads(1)
            fns = [lambda t=t, imat=imat: Q.quantize(x, t, imat)]
            if lib is not None:
                fns.append(lambda t=t, imat=imat: llamacpp.quantize(lib, t, x, imat))
            timed = _best_interleaved(fns, repeat)  # ours and llama.cpp, 1 thread each, in turn
            t1, t1_cpu = timed[0]
            numba.set_num_threads(threads)
            tn = _best(lambda t=t, imat=imat: Q.quantize(x, t, imat), repeat)
            gp = None
            if t in GGUF_PY_QUANTIZES and not with_im:
                qt = gguf.GGMLQuantizationType[t]
                gp = mb / _best(lambda qt=qt: gguf.quants.quantize(x, qt), 1)
            c1 = c1_cpu = exact = None
            if lib is not None:
                exact = bool(np.array_equal(ours, llamacpp.quantize(lib, t, x, imat)))
                c1, c1_cpu = (mb / v for v in timed[1])
            qt = gguf.GGMLQuantizationType[t]
            melem = x.size / 1e6
            numba.set_num_threads(1)
            fns = [lambda t=t, ours=ours: Q.dequantize(ours, t, x.shape)]
            if lib is not None:
                fns.append(lambda t=t, ours=ours: llamacpp.dequantize(lib, t, ours, x.shape))
            dtimed = _best_interleaved(fns, repeat)  # ours and llama.cpp's to_float, 1 thread each
            numba.set_num_threads(threads)
            dn = melem / _best(lambda t=t, ours=ours: Q.dequantize(ours, t, x.shape), repeat)
            try:
                dg = melem / _best(lambda qt=qt, ours=ours: gguf.quants.dequantize(ours, qt), 1)
            except NotImplementedError:
                dg = None
            d1_cpu = melem / dtimed[0][1]
            dl_cpu = dexact = None
            if lib is not None:
                dl_cpu = melem / dtimed[1][1]
                floats = Q.dequantize(ours, t, x.shape).view(np.uint32)
                dexact = bool(
                    np.array_equal(floats, llamacpp.dequantize(lib, t, ours, x.shape).view(np.uint32))
                )
            result.results.append(
                QuantBenchRow(
                    *(t, with_im, mb / t1, mb / tn, gp, c1, exact, dn, dg, mb / t1_cpu, c1_cpu),
                    dequant_kvant_1t_cpu_melem_s=d1_cpu,
                    dequant_llamacpp_1t_cpu_melem_s=dl_cpu,
                    dequant_bit_exact=dexact,
                )
            )
    yield Progress("bench quant", len(types), len(types), "done")
    return result
