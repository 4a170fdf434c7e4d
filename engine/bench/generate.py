"""Prefill and decode speed of a model in Kvant's engine, next to llama.cpp on the same token ids."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.bench import llamacpp
from engine.progress import CancelToken, Progress
from engine.runtime.sampling import TopLogits

# Public domain (US Declaration of Independence, 1776); repeated to the prompt length.
TEXT = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the political "
    "bands which have connected them with another, and to assume among the powers of the earth, the "
    "separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent "
    "respect to the opinions of mankind requires that they should declare the causes which impel them "
    "to the separation. We hold these truths to be self-evident, that all men are created equal, that "
    "they are endowed by their Creator with certain unalienable Rights, that among these are Life, "
    "Liberty and the pursuit of Happiness. "
)


@dataclass(frozen=True, slots=True)
class EngineSpeed:
    load_s: float
    warmup_s: float  # first forward: kernel compile or cache load
    prefill_tok_s: float
    decode_tok_s: float
    ttft_s: float
    peak_rss_mb: float | None
    # once per process before the first load (imports, Numba's registries): what the app does at
    # start, in the background (engine.prepare_runtime); 0 where already done or not applicable
    runtime_init_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WeightTraffic:
    """The weight bytes one decoded token reads (each matrix once; of the token embedding one row,
    unless it is also the output matrix), the part on GPUs, and, with every byte on one GPU whose
    memory bandwidth is known (:data:`engine.fit.profile.GPU_BANDWIDTH`), the decode speed that
    bandwidth allows: the bar of issue #7 is half of it."""

    bytes_per_token: int
    gpu_bytes_per_token: int
    gpu_name: str | None = None
    gpu_bandwidth_bytes_s: int | None = None

    @property
    def gpu_share(self) -> float:
        return self.gpu_bytes_per_token / self.bytes_per_token if self.bytes_per_token else 0.0

    @property
    def limit_tok_s(self) -> float | None:
        """Tokens/s at the GPU's full memory bandwidth (every weight byte on that GPU), else None."""
        if not self.gpu_bandwidth_bytes_s or self.gpu_bytes_per_token != self.bytes_per_token:
            return None
        return self.gpu_bandwidth_bytes_s / self.bytes_per_token


def weight_traffic(tensors, offload: dict[str, Any] | None) -> WeightTraffic:
    """:class:`WeightTraffic` of a model's tensor table (``name``, ``nbytes``) as ``offload``
    (:meth:`engine.runtime.cuda.OffloadInfo.to_dict`) placed it: the last ``n_gpu_layers`` layers
    on GPUs, the output layer too when ``output_on_gpu``."""
    sizes = {t.name: t.nbytes for t in tensors}
    tied = "output.weight" not in sizes
    offload = offload or {}
    n_gpu = int(offload.get("n_gpu_layers", 0))
    first_gpu = int(offload.get("n_layer", 0)) - n_gpu
    total = gpu = 0
    for name, nbytes in sizes.items():
        if name == "token_embd.weight" and not tied:
            continue  # one row per token
        if name.startswith("blk."):
            on_gpu = n_gpu > 0 and int(name.split(".")[1]) >= first_gpu
        else:  # the output layer (and the tied embedding it reads whole); small extras with it
            on_gpu = bool(offload.get("output_on_gpu"))
        total += nbytes
        gpu += nbytes if on_gpu else 0
    used = {int(k) for k in offload.get("vram_bytes", {})}
    devices = [d for d in offload.get("devices", []) if d["index"] in used]
    if len(devices) != 1 or offload.get("simulator"):
        return WeightTraffic(total, gpu)
    from engine.fit.profile import gpu_bandwidth_for

    name = devices[0]["name"]
    return WeightTraffic(total, gpu, name, gpu_bandwidth_for(name))


@dataclass(frozen=True, slots=True)
class GenerateBench:
    model: str
    file_mb: float
    threads: int
    n_prompt: int
    n_gen: int
    kvant: EngineSpeed
    llamacpp: EngineSpeed | None
    llamacpp_version: str | None
    n_gpu_layers: int | str = 0  # as requested
    gpu: dict[str, Any] | None = None  # engine.runtime.cuda.OffloadInfo.to_dict(): what ran where, or why not
    # per GPU device of the decode: "CUDA graphs" or "kernel by kernel (why)", as the run ended
    gpu_launch_modes: list[str] | None = None
    # each decoded token was picked on the GPU (its id, not the logits, came back)
    greedy_on_gpu: bool = False
    traffic: WeightTraffic | None = None  # weight bytes a decoded token reads, where, and the GPU's limit

    def ratios(self) -> dict[str, float] | None:
        if self.llamacpp is None:
            return None
        return {
            "prefill": self.kvant.prefill_tok_s / self.llamacpp.prefill_tok_s,
            "decode": self.kvant.decode_tok_s / self.llamacpp.decode_tok_s,
        }

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "ratios": self.ratios()}
        if self.traffic is not None:
            t = self.traffic
            limit = t.limit_tok_s
            out["traffic"] = {
                **asdict(t),
                "gpu_share": t.gpu_share,
                "limit_tok_s": limit,
                "decode_fraction_of_limit": None if limit is None else self.kvant.decode_tok_s / limit,
            }
        return out


def _peak_rss_mb() -> float | None:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 2**20 if sys.platform == "darwin" else usage / 1024


def prompt_ids(tokenize, n: int) -> list[int]:
    ids = tokenize(TEXT * (n // 60 + 2))
    return ids[:n]


def bench_generate(
    path: str | Path,
    *,
    n_prompt: int = 512,
    n_gen: int = 128,
    threads: int | None = None,
    vs_llamacpp: bool = False,
    n_gpu_layers: int | str = 0,
    cancel: CancelToken | None = None,
) -> Iterator[Progress]:
    """Measure load, prefill (one ``n_prompt`` batch) and greedy decode (``n_gen`` tokens).

    ``n_gpu_layers`` offloads layers to NVIDIA GPUs as :func:`engine.open_model` does; the result
    records what was offloaded (or why nothing was), and llama.cpp gets the same layer count."""
    import numba

    import engine

    path = Path(path)
    threads = threads or numba.config.NUMBA_NUM_THREADS
    n_ctx = n_prompt + n_gen + 8
    yield Progress("bench", 0, 4, "loading")
    t0 = time.perf_counter()
    engine.prepare_runtime()
    runtime_init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = engine.open_model(path, n_ctx=n_ctx, threads=threads, n_gpu_layers=n_gpu_layers)
    load_s = time.perf_counter() - t0
    offload = model.offload
    traffic = weight_traffic(model._gguf.tensors, None if offload is None else offload.to_dict())
    if n_gpu_layers not in (0, None):
        yield Progress("bench", 0, 4, offload.message())
    try:
        net = model.net
        ids = np.asarray(prompt_ids(model.tokenize, n_prompt), np.int32)
        yield Progress("bench", 1, 4, "warming up")
        t0 = time.perf_counter()
        net.forward(ids[:8], 0)
        # two decoded tokens: the first runs the GPU programs kernel by kernel, the second captures
        # their CUDA graphs (which the timed tokens replay)
        for pos in (8, 9):
            net.forward(ids[pos : pos + 1], pos, top_k=1)
        warmup_s = time.perf_counter() - t0
        model.reset()
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield Progress("bench", 2, 4, f"prefill of {len(ids)} tokens")
        t0 = time.perf_counter()
        logits = net.forward(ids, 0, last_only=True)
        t_prefill = time.perf_counter() - t0
        nxt = int(np.argmax(logits[-1]))
        ttft = time.perf_counter() - t0
        yield Progress("bench", 3, 4, f"decode of {n_gen} tokens")
        picked = 0
        t0 = time.perf_counter()
        for pos in range(len(ids), len(ids) + n_gen):
            out = net.forward(np.array([nxt], np.int32), pos, top_k=1)
            if isinstance(out, TopLogits):  # picked on the GPU holding the output layer
                nxt = int(out.ids[0])
                picked += 1
            else:
                nxt = int(np.argmax(out[-1]))
        t_decode = time.perf_counter() - t0
        gpu = getattr(net, "gpu", None)
        modes = None if gpu is None else [g.launch_mode for g in gpu.decode]
        ours = EngineSpeed(
            load_s, warmup_s, len(ids) / t_prefill, n_gen / t_decode, ttft, _peak_rss_mb(), runtime_init_s
        )
    finally:
        model.close()
    theirs = None
    version = llamacpp.available() if vs_llamacpp else None
    if version:
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield Progress("bench", 3, 4, "llama.cpp")
        ngl = 0
        if offload is not None and offload.n_gpu_layers:
            ngl = offload.n_gpu_layers + (1 if offload.output_on_gpu else 0)
        theirs = _bench_llamacpp(path, ids.tolist(), n_gen, n_ctx, threads, ngl)
    yield Progress("bench", 4, 4, "done")
    return GenerateBench(
        str(path),
        path.stat().st_size / 1e6,
        threads,
        len(ids),
        n_gen,
        ours,
        theirs,
        version,
        n_gpu_layers,
        None if offload is None else offload.to_dict(),
        modes,
        picked == n_gen,
        traffic,
    )


def _bench_llamacpp(
    path: Path, ids: list[int], n_gen: int, n_ctx: int, threads: int, n_gpu_layers: int = 0
) -> EngineSpeed:
    t0 = time.perf_counter()
    if n_gpu_layers:  # llama.cpp counts the output layer as one more layer
        import llama_cpp

        llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            verbose=False,
        )
    else:
        llm = llamacpp.open_llama(path, n_ctx, threads)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm.eval(ids[:8])
    warmup_s = time.perf_counter() - t0
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t_prefill = time.perf_counter() - t0
    nxt = int(np.argmax(llamacpp.last_logits(llm)))
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([nxt])
        nxt = int(np.argmax(llamacpp.last_logits(llm)))
    t_decode = time.perf_counter() - t0
    return EngineSpeed(load_s, warmup_s, len(ids) / t_prefill, n_gen / t_decode, ttft, None)
