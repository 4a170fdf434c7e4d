"""Will this model run on this machine, where do its layers go, and how fast will it decode?

:func:`plan` takes a :class:`ModelShape`, one quant's :class:`QuantWeights`, a context length,
a KV-cache type and a :class:`HardwareProfile`, and returns a :class:`FitPlan`: per-device
memory, the placement, a :class:`Verdict` with a sentence, and decode speed.

Memory per device (what llama.cpp allocates):
- weights: the layers' tensors from the tensor table; the token embedding always stays on the
  CPU (llama.cpp runs get_rows there); the output matrix goes with the output layer (a tied
  embedding is duplicated onto a GPU that holds the output, as llama.cpp does).
- KV cache per layer on the device of that layer: n_head_kv × (d_k + d_v) × cells × bytes,
  cells = n_ctx, or min(n_ctx, window + n_ubatch) on sliding-window layers.
- compute buffer (estimate; llama.cpp measures it in a dry run): per used device the largest
  layer's activations for one micro-batch, 4 B × n_ubatch × (2·n_embd + n_head·d_k +
  n_head_kv·(d_k+d_v) + 2·n_ff), plus the flash-attention KQ mask n_ctx × n_ubatch × 2 B
  (without flash attention the scores n_head × n_ctx × n_ubatch × 4 B); the device holding the
  output layer adds the logits n_vocab × n_ubatch × 4 B.
- the host output buffer n_vocab × 4 × n_outputs (n_outputs = 1, one sequence), in RAM.
- fixed reserves: :data:`GPU_RESERVE_BYTES` kept free per CUDA GPU (llama.cpp ``--fit`` keeps
  1024 MiB free per device by default; it also covers the CUDA context),
  :data:`METAL_RESERVE_BYTES` on Apple GPUs (Ollama's Metal reserve), :data:`RAM_RESERVE_BYTES`
  of RAM for Kvant's own process (our estimate).

Weights left on the CPU are memory-mapped: what does not fit in RAM stays on disk and is paged
in as it is read. The page cache keeps what is read every token (dense weights, the output
matrix) before routed experts, and the embedding table (one row per token) last.

Speed (decode, one sequence): time per token = Σ bytes read on a device / that device's
bandwidth, over GPUs, CPU and disk. Bytes read = every weight except the embedding table (one
row) + the KV cache at a full context; MoE layers read their dense part + k/E of their experts;
paged bytes are read at the disk's speed (:data:`engine.fit.profile.DEFAULT_DISK_BANDWIDTH`,
3 GB/s NVMe, unless given). ``bound_tok_s`` is that bandwidth limit; ``tok_s`` applies the
efficiencies below (typical llama.cpp decode reaches 60-70 % of peak bandwidth; the lowest-bit
types are dequantization-bound, quant-formats.md), and a calibration factor when one is known.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from engine.errors import KvantError
from engine.fit.profile import DEFAULT_DISK_BANDWIDTH, GIB, HardwareProfile
from engine.fit.shape import DEFAULT_UBATCH, ModelShape, QuantWeights, kv_type_bytes

MIB = 1 << 20
GPU_RESERVE_BYTES = 1024 * MIB
METAL_RESERVE_BYTES = 512 * MIB
RAM_RESERVE_BYTES = 512 * MIB
N_OUTPUTS = 1
GPU_EFFICIENCY = 0.7
CPU_EFFICIENCY = 0.6
LOW_BIT_BPW = 2.5
LOW_BIT_EFFICIENCY = 0.5
#: Effective quantized mat-vec throughput per CPU thread (FLOP/s, dequantization included):
#: llama.cpp decodes the default Gemma 3 270M at 38 tok/s on 2 threads of this project's
#: AVX2 machines (fit-and-peers.md) = 2 × 268M params × 38 / 2 threads ≈ 10 GFLOP/s per thread.
#: Used only when the thread count is known (a detected machine); decode time on the CPU is
#: then max(bandwidth time, compute time), which matters for small models on few cores.
CPU_FLOPS_PER_THREAD = 10e9
DEFAULT_CTX = 4096

CONSTANTS: Mapping[str, Any] = MappingProxyType(
    {
        "gpu_reserve_bytes": GPU_RESERVE_BYTES,
        "metal_reserve_bytes": METAL_RESERVE_BYTES,
        "ram_reserve_bytes": RAM_RESERVE_BYTES,
        "n_ubatch": DEFAULT_UBATCH,
        "n_outputs": N_OUTPUTS,
        "gpu_efficiency": GPU_EFFICIENCY,
        "cpu_efficiency": CPU_EFFICIENCY,
        "low_bit_bpw": LOW_BIT_BPW,
        "low_bit_efficiency": LOW_BIT_EFFICIENCY,
        "cpu_flops_per_thread": CPU_FLOPS_PER_THREAD,
        "kv_at": "full context",
        "disk_bandwidth_default_bytes_per_s": DEFAULT_DISK_BANDWIDTH,
        "sources": MappingProxyType(
            {
                "gpu_reserve_bytes": "llama.cpp --fit default margin per device (common/fit.cpp)",
                "metal_reserve_bytes": "Ollama's reserve on Metal",
                "ram_reserve_bytes": "Kvant estimate for its own process",
                "efficiencies": "typical llama.cpp decode vs. peak bandwidth; refine with calibration",
            }
        ),
    }
)


class Verdict(enum.Enum):
    FULL_GPU = "full_gpu"
    PARTIAL_OFFLOAD = "partial_offload"
    RAM = "ram"
    DISK = "disk"
    NO_MEMORY = "no_memory"
    NO_DISK = "no_disk"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def runs(self) -> bool:
        return self in (Verdict.FULL_GPU, Verdict.PARTIAL_OFFLOAD, Verdict.RAM, Verdict.DISK)

    @property
    def resident(self) -> bool:
        """Everything in RAM/VRAM, nothing paged from disk."""
        return self in (Verdict.FULL_GPU, Verdict.PARTIAL_OFFLOAD, Verdict.RAM)


_LABELS = {
    Verdict.FULL_GPU: "fits fully in VRAM",
    Verdict.PARTIAL_OFFLOAD: "fits in RAM + VRAM (partial offload)",
    Verdict.RAM: "fits in RAM",
    Verdict.DISK: "runs from disk (slow)",
    Verdict.NO_MEMORY: "does not fit in memory",
    Verdict.NO_DISK: "does not fit on disk",
}


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """Memory and per-token traffic of one device. ``free_bytes`` may be negative (overflow)."""

    device: str  # "gpu0", "gpu1", ..., "cpu"
    name: str
    budget_bytes: int  # what the plan may use: free memory minus the reserve
    reserve_bytes: int
    weights_bytes: int  # resident weights (for the CPU: the part of the mmap kept in RAM)
    kv_bytes: int
    compute_bytes: int
    output_buffer_bytes: int
    layers: tuple[int, ...]  # layers whose attention (dense part) is here
    expert_layers: tuple[int, ...]  # layers whose routed experts are here
    holds_output: bool
    bytes_per_token: int
    bandwidth_bytes_per_s: int
    seconds_per_token: float

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.output_buffer_bytes

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["expert_layers"] = list(self.expert_layers)
        d["used_bytes"] = self.used_bytes
        d["free_bytes"] = self.free_bytes
        return d


@dataclass(frozen=True, slots=True)
class Placement:
    strategy: str  # "layers" (whole layers to GPUs) or "experts_on_cpu" (attention on GPU, experts in RAM)
    n_layer: int
    gpu_layers: int  # layers whose attention/dense part is on a GPU
    gpu_expert_layers: int  # layers whose routed experts are on a GPU (MoE only)
    output_device: str
    layer_devices: tuple[str, ...]
    expert_devices: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer_devices"] = list(self.layer_devices)
        d["expert_devices"] = list(self.expert_devices)
        return d


@dataclass(frozen=True, slots=True)
class FitPlan:
    model: str
    quant: str
    n_ctx: int
    kv_type: str
    verdict: Verdict
    sentence: str
    placement: Placement
    devices: tuple[DeviceUsage, ...]
    weights_bytes: int
    kv_bytes: int
    paged_bytes: int  # weights that do not fit in RAM + VRAM and stay on disk (mmap)
    paged_dense_bytes: int  # of which read every token (not routed experts or the embedding)
    disk_bytes_per_token: int
    bytes_per_token: int
    bound_tok_s: float
    tok_s: float
    file_bytes: int
    correction: float = 1.0
    notes: tuple[str, ...] = field(default=())

    @property
    def headroom_fraction(self) -> float:
        """Memory left over across all used devices as a share of their budgets."""
        budget = sum(d.budget_bytes for d in self.devices if d.budget_bytes > 0)
        free = sum(max(0, d.free_bytes) for d in self.devices if d.budget_bytes > 0)
        return free / budget if budget else 0.0

    def device(self, name: str) -> DeviceUsage:
        for d in self.devices:
            if d.device == name:
                return d
        raise KvantError(f"the plan has no device {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quant": self.quant,
            "n_ctx": self.n_ctx,
            "kv_type": self.kv_type,
            "verdict": self.verdict.value,
            "verdict_label": self.verdict.label,
            "sentence": self.sentence,
            "placement": self.placement.to_dict(),
            "devices": [d.to_dict() for d in self.devices],
            "weights_bytes": self.weights_bytes,
            "file_bytes": self.file_bytes,
            "kv_bytes": self.kv_bytes,
            "paged_bytes": self.paged_bytes,
            "paged_dense_bytes": self.paged_dense_bytes,
            "disk_bytes_per_token": self.disk_bytes_per_token,
            "bytes_per_token": self.bytes_per_token,
            "bound_tok_s": self.bound_tok_s,
            "tok_s": self.tok_s,
            "correction": self.correction,
            "headroom_fraction": round(self.headroom_fraction, 4),
            "notes": list(self.notes),
            "constants": {**CONSTANTS, "sources": dict(CONSTANTS["sources"])},
        }


# ---------------------------------------------------------------------------------------------


def compute_buffer_bytes(
    shape: ModelShape,
    n_ctx: int,
    *,
    logits: bool,
    n_ubatch: int = DEFAULT_UBATCH,
    flash_attn: bool = True,
) -> int:
    """Estimated graph buffer of one device (see module docstring)."""
    ff = shape.n_ff
    if shape.is_moe and shape.n_ff_expert:
        ff = max(ff, shape.n_ff_expert * (shape.n_expert_used + shape.n_expert_shared))
    q_dim = shape.n_head * shape.head_dim_k
    kv_dim = max(shape.n_head_kv) * (shape.head_dim_k + shape.head_dim_v)
    act = 4 * n_ubatch * (2 * shape.n_embd + q_dim + kv_dim + 2 * ff)
    # flash attention: only the f16 KQ mask; without it the f32 scores of every head too
    attn = 2 * n_ctx * n_ubatch
    if not flash_attn:
        attn = 4 * shape.n_head * n_ctx * n_ubatch + 4 * n_ctx * n_ubatch
    out = 4 * shape.n_vocab * n_ubatch if logits else 0
    return act + attn + out


def host_buffer_bytes(shape: ModelShape, n_ubatch: int = DEFAULT_UBATCH) -> int:
    """CPU-side graph buffer when every layer runs on GPUs (embedding lookup, copies)."""
    return 4 * n_ubatch * shape.n_embd * 2


@dataclass(frozen=True, slots=True)
class _Budget:
    device: str
    name: str
    total: int  # free memory
    reserve: int
    bandwidth: int

    @property
    def budget(self) -> int:
        return self.total - self.reserve


def _gpu_budgets(hw: HardwareProfile) -> list[_Budget]:
    reserve = METAL_RESERVE_BYTES if hw.unified_memory else GPU_RESERVE_BYTES
    return [
        _Budget(f"gpu{i}", g.name, g.vram_free_bytes, reserve, g.bandwidth_bytes_per_s)
        for i, g in enumerate(hw.gpus)
    ]


def _splits(gpus: list[_Budget]) -> list[float]:
    """llama.cpp's default tensor split: cumulative shares of free memory."""
    weights = [max(0, g.budget) for g in gpus]
    total = sum(weights) or len(weights)
    if not sum(weights):
        weights = [1] * len(weights)
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _assign(gpus: list[_Budget], indices: list[int], n_slots: int) -> dict[int, str]:
    """Give ``indices`` (layer numbers, the output is index n_layer) to GPUs in proportion."""
    if not gpus or not indices:
        return {}
    splits = _splits(gpus)
    start = indices[0]
    out: dict[int, str] = {}
    for il in indices:
        g = bisect.bisect_right(splits, (il - start) / n_slots)
        out[il] = gpus[min(g, len(gpus) - 1)].device
    return out


def _layer_split(shape: ModelShape, gpus: list[_Budget], ngl: int) -> Placement:
    n = shape.n_layer
    ngl = max(0, min(ngl, n + 1))
    start = n - min(ngl, n)
    act = min(ngl, n + 1)
    indices = list(range(start, n + (1 if ngl > n else 0)))
    where = _assign(gpus, indices, act) if gpus else {}
    layer_dev = tuple(where.get(il, "cpu") for il in range(n))
    return Placement(
        strategy="layers",
        n_layer=n,
        gpu_layers=sum(1 for d in layer_dev if d != "cpu"),
        gpu_expert_layers=sum(1 for d in layer_dev if d != "cpu") if shape.is_moe else 0,
        output_device=where.get(n, "cpu"),
        layer_devices=layer_dev,
        expert_devices=layer_dev,
    )


def _experts_on_cpu(shape: ModelShape, gpus: list[_Budget], n_cpu_moe: int) -> Placement:
    """All attention/dense weights and the output on GPUs; experts of the first ``n_cpu_moe``
    layers in RAM (llama.cpp ``--n-cpu-moe``)."""
    full = _layer_split(shape, gpus, shape.n_layer + 1)
    experts = tuple("cpu" if il < n_cpu_moe else d for il, d in enumerate(full.layer_devices))
    return Placement(
        strategy="experts_on_cpu",
        n_layer=shape.n_layer,
        gpu_layers=full.gpu_layers,
        gpu_expert_layers=sum(1 for d in experts if d != "cpu"),
        output_device=full.output_device,
        layer_devices=full.layer_devices,
        expert_devices=experts,
    )


@dataclass(frozen=True, slots=True)
class _Eval:
    placement: Placement
    devices: tuple[DeviceUsage, ...]
    gpus_fit: bool
    cpu_fits: bool
    paged: int
    paged_dense: int
    disk_per_token: int
    seconds: float
    bound_seconds: float


def _evaluate(
    shape: ModelShape,
    weights: QuantWeights,
    hw: HardwareProfile,
    gpus: list[_Budget],
    p: Placement,
    n_ctx: int,
    kv_type: str,
    n_ubatch: int,
    flash_attn: bool,
    efficiency: float,
    buffer_factor: float,
) -> _Eval:
    n = shape.n_layer
    frac = shape.expert_fraction
    kv = [shape.kv_bytes_layer(il, n_ctx, kv_type, n_ubatch) for il in range(n)]
    bpw = weights.bits_per_weight(shape.total_params)
    low_bit = LOW_BIT_EFFICIENCY if 0 < bpw < LOW_BIT_BPW else 1.0
    gpu_used_total = 0
    usages: list[DeviceUsage] = []
    gpus_fit = True
    seconds = bound = 0.0
    for g in gpus:
        layers = tuple(il for il in range(n) if p.layer_devices[il] == g.device)
        exp_layers = tuple(
            il for il in range(n) if p.expert_devices[il] == g.device and weights.layers[il].experts
        )
        out_here = p.output_device == g.device
        w = sum(weights.layers[il].dense for il in layers) + sum(
            weights.layers[il].experts for il in exp_layers
        )
        read = sum(weights.layers[il].dense for il in layers) + frac * sum(
            weights.layers[il].experts for il in exp_layers
        )
        if out_here:
            w += weights.output_bytes + weights.other_bytes
            read += weights.output_bytes + weights.other_bytes
        kvb = sum(kv[il] for il in layers)
        used_any = bool(layers or exp_layers or out_here)
        comp = compute_buffer_bytes(shape, n_ctx, logits=out_here, n_ubatch=n_ubatch, flash_attn=flash_attn)
        comp = round(comp * buffer_factor) if used_any else 0
        per_token = round(read + kvb)
        secs = per_token / (g.bandwidth * GPU_EFFICIENCY * low_bit * efficiency)
        seconds += secs
        bound += per_token / g.bandwidth
        u = DeviceUsage(
            device=g.device,
            name=g.name,
            budget_bytes=g.budget,
            reserve_bytes=g.reserve,
            weights_bytes=w,
            kv_bytes=kvb,
            compute_bytes=comp,
            output_buffer_bytes=0,
            layers=layers,
            expert_layers=exp_layers,
            holds_output=out_here,
            bytes_per_token=per_token,
            bandwidth_bytes_per_s=g.bandwidth,
            seconds_per_token=secs,
        )
        gpus_fit = gpus_fit and u.free_bytes >= 0
        gpu_used_total += u.used_bytes + (g.reserve if hw.unified_memory else 0)
        usages.append(u)

    # CPU: non-pageable buffers first, then the memory-mapped weights.
    cpu_layers = tuple(il for il in range(n) if p.layer_devices[il] == "cpu")
    cpu_exp_layers = tuple(
        il for il in range(n) if p.expert_devices[il] == "cpu" and weights.layers[il].experts
    )
    out_cpu = p.output_device == "cpu"
    kv_cpu = sum(kv[il] for il in cpu_layers)
    if cpu_layers or cpu_exp_layers or out_cpu:
        comp_cpu = compute_buffer_bytes(
            shape, n_ctx, logits=out_cpu, n_ubatch=n_ubatch, flash_attn=flash_attn
        )
    else:
        comp_cpu = host_buffer_bytes(shape, n_ubatch)
    comp_cpu = round(comp_cpu * buffer_factor)
    out_buf = shape.n_vocab * 4 * N_OUTPUTS
    cpu_total = hw.ram_available_bytes - (gpu_used_total if hw.unified_memory else 0)
    cpu_budget = cpu_total - RAM_RESERVE_BYTES
    hot = sum(weights.layers[il].dense for il in cpu_layers)
    if out_cpu:
        hot += weights.output_bytes + weights.other_bytes
    experts_cpu = sum(weights.layers[il].experts for il in cpu_exp_layers)
    cold = 0 if (out_cpu and weights.tied) else weights.token_embd_bytes
    room = cpu_budget - kv_cpu - comp_cpu - out_buf
    cpu_fits = room >= 0
    room = max(0, room)
    paged_hot = max(0, hot - room)
    room_after_hot = max(0, room - hot)
    paged_exp = max(0, experts_cpu - room_after_hot)
    room_after_exp = max(0, room_after_hot - experts_cpu)
    paged_cold = max(0, cold - room_after_exp)
    resident = hot + experts_cpu + cold - paged_hot - paged_exp - paged_cold
    embd_row = weights.token_embd_bytes // max(1, shape.n_vocab)
    cpu_read = round((hot - paged_hot) + frac * (experts_cpu - paged_exp) + embd_row + kv_cpu)
    disk_read = round(paged_hot + frac * paged_exp)
    cpu_secs = cpu_read / (hw.cpu_bandwidth_bytes_per_s * CPU_EFFICIENCY * low_bit * efficiency)
    if hw.cpu_threads and bpw > 0:
        params_read = (cpu_read - kv_cpu) * 8 / bpw
        cpu_secs = max(cpu_secs, 2 * params_read / (hw.cpu_threads * CPU_FLOPS_PER_THREAD * efficiency))
    disk_secs = disk_read / hw.disk_bandwidth_bytes_per_s
    seconds += cpu_secs + disk_secs
    bound += cpu_read / hw.cpu_bandwidth_bytes_per_s + disk_secs
    usages.append(
        DeviceUsage(
            device="cpu",
            name="RAM",
            budget_bytes=cpu_budget,
            reserve_bytes=RAM_RESERVE_BYTES,
            weights_bytes=resident,
            kv_bytes=kv_cpu,
            compute_bytes=comp_cpu,
            output_buffer_bytes=out_buf,
            layers=cpu_layers,
            expert_layers=cpu_exp_layers,
            holds_output=out_cpu,
            bytes_per_token=cpu_read,
            bandwidth_bytes_per_s=hw.cpu_bandwidth_bytes_per_s,
            seconds_per_token=cpu_secs,
        )
    )
    return _Eval(
        placement=p,
        devices=tuple(usages),
        gpus_fit=gpus_fit,
        cpu_fits=cpu_fits,
        paged=paged_hot + paged_exp + paged_cold,
        paged_dense=paged_hot,
        disk_per_token=disk_read,
        seconds=seconds,
        bound_seconds=bound,
    )


def _search(
    shape: ModelShape, weights: QuantWeights, hw: HardwareProfile, gpus: list[_Budget], **kw: Any
) -> _Eval:
    n = shape.n_layer
    best_a: _Eval | None = None
    for ngl in range(n + 1 if gpus else 0, -1, -1):
        ev = _evaluate(shape, weights, hw, gpus, _layer_split(shape, gpus, ngl), **kw)
        if ev.gpus_fit:
            best_a = ev
            break
    candidates = [best_a] if best_a is not None else []
    if gpus and shape.is_moe and weights.expert_bytes:
        for n_cpu_moe in range(0, n + 1):
            ev = _evaluate(shape, weights, hw, gpus, _experts_on_cpu(shape, gpus, n_cpu_moe), **kw)
            if ev.gpus_fit:
                candidates.append(ev)
                break
    if not candidates:  # not even zero GPU layers fit (a GPU with no room at all)
        return _evaluate(shape, weights, hw, [], _layer_split(shape, [], 0), **kw)
    fitting = [c for c in candidates if c.cpu_fits] or candidates
    return min(fitting, key=lambda c: (c.seconds, c.paged))


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan(
    shape: ModelShape,
    weights: QuantWeights,
    hw: HardwareProfile,
    *,
    n_ctx: int | None = None,
    kv_type: str = "f16",
    n_ubatch: int = DEFAULT_UBATCH,
    flash_attn: bool = True,
    on_disk: bool = False,
    correction: float = 1.0,
    buffer_factor: float = 1.0,
) -> FitPlan:
    """The best placement of ``weights`` on ``hw`` and its verdict.

    ``n_ctx`` defaults to min(4096, the training context) (llama.cpp's default context).
    ``on_disk`` says the file is already downloaded (then free disk space does not matter).
    ``correction`` multiplies the speed estimate and ``buffer_factor`` the compute-buffer
    estimate (both from :mod:`engine.fit.calibration`).
    """
    kv_type_bytes(kv_type)  # validates
    if n_ctx is None:
        n_ctx = min(DEFAULT_CTX, shape.n_ctx_train or DEFAULT_CTX)
    if n_ctx <= 0:
        raise KvantError(f"the context length must be positive (got {n_ctx})")
    if len(weights.layers) != shape.n_layer:
        raise KvantError(
            f"{weights.name} has sizes for {len(weights.layers)} layers but {shape.name} has {shape.n_layer}"
        )
    gpus = _gpu_budgets(hw)
    ev = _search(
        shape,
        weights,
        hw,
        gpus,
        n_ctx=n_ctx,
        kv_type=kv_type,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        efficiency=correction,
        buffer_factor=buffer_factor,
    )
    p = ev.placement
    tok_s = 1.0 / ev.seconds if ev.seconds > 0 else 0.0
    bound = 1.0 / ev.bound_seconds if ev.bound_seconds > 0 else 0.0
    kv_total = shape.kv_bytes(n_ctx, kv_type, n_ubatch)
    bytes_per_token = sum(d.bytes_per_token for d in ev.devices) + ev.disk_per_token
    cpu = ev.devices[-1]
    gpu_devs = [d for d in ev.devices if d.device != "cpu"]
    notes: list[str] = list(weights.notes) + [n for n in shape.notes if n not in weights.notes]
    notes += list(hw.assumptions)

    disk_short = not on_disk and hw.disk_free_bytes is not None and hw.disk_free_bytes < weights.file_bytes
    n = shape.n_layer
    out_where = "GPU" if p.output_device != "cpu" else "RAM"
    speed = f"about {tok_s:.1f} tok/s (bandwidth bound {bound:.1f})"
    if disk_short:
        verdict = Verdict.NO_DISK
        sentence = (
            f"Does not fit on disk: the file needs {_gib(weights.file_bytes)} and only "
            f"{_gib(hw.disk_free_bytes or 0)} is free."
        )
    elif not ev.cpu_fits:
        verdict = Verdict.NO_MEMORY
        need = cpu.kv_bytes + cpu.compute_bytes + cpu.output_buffer_bytes
        sentence = (
            f"Does not fit in memory: the KV cache ({_gib(kv_total)} at {n_ctx:,} tokens, {kv_type}) and "
            f"buffers need {_gib(need)} of RAM beyond what the GPUs take, but only "
            f"{_gib(max(0, cpu.budget_bytes))} is usable; try a shorter context or a quantized KV cache."
        )
    elif ev.paged > 0:
        verdict = Verdict.DISK
        only_experts = ""
        if shape.is_moe and ev.paged_dense == 0:
            only_experts = (
                f" (only routed experts, of which {shape.n_expert_used}/{shape.n_expert} are read per token)"
            )
        sentence = (
            f"Runs from disk (slow): {_gib(ev.paged)} of the {_gib(weights.weight_bytes)} of weights do not "
            f"fit in RAM + VRAM and stay on disk (mmap){only_experts}; {_gib(ev.disk_per_token)} is read "
            f"from disk per token at {hw.disk_bandwidth_bytes_per_s / 1e9:.1f} GB/s: {speed}."
        )
    elif gpu_devs and p.gpu_layers == n and p.output_device != "cpu" and not cpu.expert_layers:
        verdict = Verdict.FULL_GPU
        where = gpu_devs[0].name if len(gpu_devs) == 1 else f"{len(gpu_devs)} GPUs"
        left = ", ".join(f"{_gib(d.free_bytes)} left on {d.device}" for d in gpu_devs)
        sentence = f"Fits fully in VRAM: all {n} layers and the output on {where} ({left}); {speed}."
    elif p.gpu_layers > 0:
        verdict = Verdict.PARTIAL_OFFLOAD
        if p.strategy == "experts_on_cpu":
            moved = n - p.gpu_expert_layers
            detail = (
                f"attention and shared weights of all {n} layers on GPU, the experts of {moved} layers in RAM"
            )
        else:
            detail = f"{p.gpu_layers} of {n} layers on GPU, the rest and the output in {out_where}"
        sentence = f"Fits in RAM + VRAM with partial offload: {detail}; {speed}."
    else:
        verdict = Verdict.RAM
        why = " (no layer fits on the GPU)" if gpus else ""
        sentence = f"Fits in RAM{why}: {_gib(cpu.free_bytes)} of RAM left; {speed}."
    if verdict in (Verdict.FULL_GPU, Verdict.PARTIAL_OFFLOAD, Verdict.DISK) and bound > 0:
        notes.append(
            f"estimate = bandwidth bound × efficiency (GPU {GPU_EFFICIENCY}, CPU {CPU_EFFICIENCY}"
            + (
                f", × {LOW_BIT_EFFICIENCY} for types under {LOW_BIT_BPW} bpw"
                if 0 < weights.bits_per_weight(shape.total_params) < LOW_BIT_BPW
                else ""
            )
            + "); kernel launches, MoE routing and sampling cost more on real runs"
        )
    return FitPlan(
        model=shape.name,
        quant=weights.name,
        n_ctx=n_ctx,
        kv_type=kv_type,
        verdict=verdict,
        sentence=sentence,
        placement=p,
        devices=ev.devices,
        weights_bytes=weights.weight_bytes,
        kv_bytes=kv_total,
        paged_bytes=ev.paged,
        paged_dense_bytes=ev.paged_dense,
        disk_bytes_per_token=ev.disk_per_token,
        bytes_per_token=bytes_per_token,
        bound_tok_s=round(bound, 3),
        tok_s=round(tok_s, 3) if verdict.runs else 0.0,
        file_bytes=weights.file_bytes,
        correction=correction,
        notes=tuple(notes),
    )
