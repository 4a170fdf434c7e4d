"""What the planner needs to know about a model: its architecture (:class:`ModelShape`) and
one quant's weight bytes per layer (:class:`QuantWeights`).

Both can be built from a GGUF header alone (:func:`describe_gguf`): a local file opened
with :func:`engine.gguf.open_gguf`, or any object with the same header API (``get(key)``,
``tensors`` with ``name``/``nbytes``/``n_elements``, ``file_size``), such as a header
fetched from the Hub. A partial header (the first shard of a split model) is accepted:
missing layers are filled with the mean of the known ones and the result is marked
estimated. Catalog entries build them from architecture facts (:mod:`engine.fit.catalog`).

Sliding-window rules follow llama.cpp (``src/llama-model.cpp``, ``hparams.set_swa_pattern``):
layer ``il`` slides when ``il % n < n - 1``: Gemma 2 and gpt-oss n=2 (even layers slide),
Cohere 2 n=4, Gemma 3n n=5, Gemma 3 n=6 (5 sliding, then 1 global). llama.cpp disables
Phi-3's window and runs Mistral (``llama`` architecture), Qwen 2/3 and Llama with full
attention, so they get none here either. A ``{arch}.attention.sliding_window_pattern``
key (bool per layer, or an int n) overrides the table.

MLA (DeepSeek 2/3/R1): a GGUF converted for llama.cpp's MLA path has
``attention.key_length_mla`` and stores the cache shape itself in ``key_length`` (kv_lora_rank
+ rope dims = 576), ``value_length`` (kv_lora_rank = 512) and ``head_count_kv`` (1); an
older conversion has per-head 192/128 and 128 KV heads and llama.cpp runs it without MLA.
Either way the KV cache is ``head_count_kv × (key_length + value_length)``, as read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from engine.errors import ModelError

#: llama.cpp's ``set_swa_pattern(n)`` per architecture (see module docstring).
SWA_PATTERNS: Mapping[str, int] = MappingProxyType(
    {"gemma2": 2, "gpt-oss": 2, "cohere2": 4, "gemma3n": 5, "gemma3": 6}
)

#: Bytes per KV-cache element for the cache types llama.cpp offers (block size 32).
KV_TYPE_BYTES: Mapping[str, float] = MappingProxyType(
    {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
)

#: llama.cpp's default micro-batch (``n_ubatch``): sliding layers keep window + n_ubatch cells.
DEFAULT_UBATCH = 512


class TensorLike(Protocol):
    name: str
    nbytes: int

    @property
    def n_elements(self) -> int: ...


class HeaderLike(Protocol):
    """The part of :class:`engine.gguf.GGUFModel` the planner reads."""

    tensors: list[Any]

    def get(self, key: str, default: Any = None) -> Any: ...

    @property
    def file_size(self) -> int: ...


def swa_layers_for(n_layer: int, pattern: int | None) -> tuple[bool, ...]:
    """Which layers slide under llama.cpp's ``set_swa_pattern(pattern)``."""
    if not pattern or pattern <= 1:
        return (False,) * n_layer
    return tuple(il % pattern < pattern - 1 for il in range(n_layer))


def kv_type_bytes(kv_type: str) -> float:
    try:
        return KV_TYPE_BYTES[kv_type]
    except KeyError:
        raise ModelError(
            f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_TYPE_BYTES)}"
        ) from None


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A model's architecture, independent of its quantization."""

    name: str
    architecture: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: int  # dense feed-forward width (largest layer)
    total_params: int
    active_params: int
    sliding_window: int | None = None
    swa_layers: tuple[bool, ...] = ()
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_expert: int = 0
    n_expert_shared: int = 0
    tied_embeddings: bool = False
    source: str = "gguf"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_layer <= 0:
            raise ModelError(f"{self.name}: a model needs at least one layer (got {self.n_layer})")
        if len(self.n_head_kv) != self.n_layer:
            raise ModelError(f"{self.name}: {len(self.n_head_kv)} KV-head counts for {self.n_layer} layers")
        if self.swa_layers and len(self.swa_layers) != self.n_layer:
            raise ModelError(
                f"{self.name}: sliding-window flags for {len(self.swa_layers)} of {self.n_layer}"
            )

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 1 and self.n_expert_used > 0

    @property
    def expert_fraction(self) -> float:
        """Share of the routed experts read per token (k/E); 1 for dense models."""
        return self.n_expert_used / self.n_expert if self.is_moe else 1.0

    def is_swa(self, il: int) -> bool:
        return bool(self.sliding_window) and bool(self.swa_layers) and self.swa_layers[il]

    @property
    def n_swa_layers(self) -> int:
        return sum(1 for il in range(self.n_layer) if self.is_swa(il))

    def kv_cells(self, il: int, n_ctx: int, n_ubatch: int = DEFAULT_UBATCH) -> int:
        """KV cells layer ``il`` allocates: n_ctx, or min(n_ctx, window + n_ubatch) when it slides."""
        if self.is_swa(il):
            return min(n_ctx, int(self.sliding_window or 0) + n_ubatch)
        return n_ctx

    def kv_bytes_layer(
        self, il: int, n_ctx: int, kv_type: str = "f16", n_ubatch: int = DEFAULT_UBATCH
    ) -> int:
        per_cell = self.n_head_kv[il] * (self.head_dim_k + self.head_dim_v)
        return round(per_cell * self.kv_cells(il, n_ctx, n_ubatch) * kv_type_bytes(kv_type))

    def kv_bytes(self, n_ctx: int, kv_type: str = "f16", n_ubatch: int = DEFAULT_UBATCH) -> int:
        return sum(self.kv_bytes_layer(il, n_ctx, kv_type, n_ubatch) for il in range(self.n_layer))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_head_kv"] = list(self.n_head_kv)
        d["swa_layers"] = [il for il in range(self.n_layer) if self.is_swa(il)]
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True, slots=True)
class LayerBytes:
    """Weight bytes of one transformer block: ``dense`` is read every token; ``experts`` are the
    routed MoE experts (``ffn_*_exps``), of which only k/E is read per token."""

    dense: int
    experts: int = 0

    @property
    def total(self) -> int:
        return self.dense + self.experts


@dataclass(frozen=True, slots=True)
class QuantWeights:
    """One quant of a model: where its weight bytes are.

    ``output_bytes`` is ``output.weight``, or the token embedding when the model ties them
    (``tied``; llama.cpp then loads a duplicate onto the output's device). ``other_bytes``
    holds the rest (output_norm, rope factors, anything outside ``blk.N``).
    """

    name: str
    file_bytes: int
    layers: tuple[LayerBytes, ...]
    token_embd_bytes: int
    output_bytes: int
    other_bytes: int = 0
    tied: bool = False
    approx: bool = False
    estimated: bool = False
    notes: tuple[str, ...] = ()

    @property
    def layer_bytes(self) -> int:
        return sum(lb.total for lb in self.layers)

    @property
    def expert_bytes(self) -> int:
        return sum(lb.experts for lb in self.layers)

    @property
    def weight_bytes(self) -> int:
        """All tensor bytes in the file (a tied output is not counted twice)."""
        return (
            self.layer_bytes
            + self.token_embd_bytes
            + (0 if self.tied else self.output_bytes)
            + self.other_bytes
        )

    def bits_per_weight(self, params: int) -> float:
        return self.file_bytes * 8 / params if params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file_bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes,
            "layer_bytes": [lb.total for lb in self.layers],
            "expert_bytes": self.expert_bytes,
            "token_embd_bytes": self.token_embd_bytes,
            "output_bytes": self.output_bytes,
            "other_bytes": self.other_bytes,
            "tied": self.tied,
            "approx": self.approx,
            "estimated": self.estimated,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# From a GGUF header


def _scalar(v: Any) -> int | None:
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list | tuple):
        return int(max(v)) if v else None
    return int(v)


def _per_layer(v: Any, n_layer: int, default: int) -> tuple[int, ...]:
    if v is None:
        return (default,) * n_layer
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list | tuple):
        vals = [int(x) for x in v]
        if len(vals) == n_layer:
            return tuple(vals)
        return (max(vals) if vals else default,) * n_layer
    return (int(v),) * n_layer


def _swa_from_header(get: Any, arch: str, n_layer: int, window: int | None) -> tuple[bool, ...]:
    if not window:
        return (False,) * n_layer
    pat = get(f"{arch}.attention.sliding_window_pattern")
    if pat is not None:
        if hasattr(pat, "tolist"):
            pat = pat.tolist()
        if isinstance(pat, list | tuple) and len(pat) == n_layer:
            return tuple(bool(x) for x in pat)
        if isinstance(pat, int | float) and not isinstance(pat, bool):
            return swa_layers_for(n_layer, int(pat))
    return swa_layers_for(n_layer, SWA_PATTERNS.get(arch))


def _layer_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    part = name[4:].split(".", 1)[0]
    return int(part) if part.isdigit() else None


def _is_expert(name: str) -> bool:
    # ffn_gate_exps / ffn_up_exps / ffn_down_exps / ffn_gate_up_exps (and their biases)
    return "_exps" in name


class _Headers:
    """Parsed :class:`engine.gguf.GGUFHeader` objects (e.g. fetched from the Hub, one per shard)
    seen through the :class:`HeaderLike` API: metadata of the first, tensors of all."""

    def __init__(self, headers: list[Any]) -> None:
        if not headers:
            raise ModelError("no GGUF header to describe")
        self._meta = headers[0].metadata
        self.tensors = [t for h in headers for t in h.tensors]
        self._size = sum(int(h.file_size) for h in headers)

    def get(self, key: str, default: Any = None) -> Any:
        mv = self._meta.get(key)
        return default if mv is None else getattr(mv, "value", mv)

    @property
    def file_size(self) -> int:
        return self._size


def as_header(obj: Any) -> HeaderLike:
    """A :class:`HeaderLike` from a GGUFModel-like object, a GGUFHeader, or a list of headers."""
    if hasattr(obj, "get") and hasattr(obj, "tensors") and hasattr(obj, "file_size"):
        return obj
    return _Headers(list(obj) if isinstance(obj, list | tuple) else [obj])


def describe_gguf(model: Any, *, quant_name: str | None = None) -> tuple[ModelShape, QuantWeights]:
    """Shape and weights from a GGUF header (tensor table + metadata; no tensor data is read).

    ``model`` is an open :class:`engine.gguf.GGUFModel`, anything with its header API, a parsed
    :class:`engine.gguf.GGUFHeader`, or the list of headers of a split model's shards (what
    ``engine.hub`` fetches). Pass only some shards and the missing layers are estimated.
    """
    model = as_header(model)
    get = model.get
    arch = str(get("general.architecture", "unknown"))

    def a(key: str) -> Any:
        return get(f"{arch}.{key}")

    n_layer = _scalar(a("block_count"))
    if not n_layer:
        raise ModelError(f"this GGUF header has no {arch}.block_count, so its layers cannot be planned")
    n_embd = _scalar(a("embedding_length")) or 0
    n_head = _scalar(a("attention.head_count")) or 1
    n_head_kv = _per_layer(a("attention.head_count_kv"), n_layer, n_head)
    default_head = n_embd // n_head if n_embd and n_head else 0
    hd_k = _scalar(a("attention.key_length")) or default_head
    hd_v = _scalar(a("attention.value_length")) or default_head
    window = _scalar(a("attention.sliding_window")) or None
    if arch == "phi3":
        window = None  # llama.cpp disables Phi-3's sliding window (see module docstring)
    tokens = get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if tokens is not None else (_scalar(a("vocab_size")) or 0)

    tensors = list(model.tensors)
    per_layer: dict[int, list[int]] = {}
    embd = output = other = 0
    params = expert_params = 0
    embd_params = 0
    for t in tensors:
        n = int(t.n_elements)
        params += n
        il = _layer_index(t.name)
        if il is not None and il < n_layer:
            slot = per_layer.setdefault(il, [0, 0])
            if _is_expert(t.name):
                slot[1] += int(t.nbytes)
                expert_params += n
            else:
                slot[0] += int(t.nbytes)
        elif t.name == "token_embd.weight":
            embd += int(t.nbytes)
            embd_params = n
        elif t.name == "output.weight":
            output += int(t.nbytes)
        else:
            other += int(t.nbytes)
    if not n_vocab and embd_params and n_embd:
        n_vocab = embd_params // n_embd
    tied = output == 0 and embd > 0
    has_output_tensor = any(t.name == "output.weight" for t in tensors)

    notes: list[str] = []
    estimated = False
    missing = [il for il in range(n_layer) if il not in per_layer]
    if missing and per_layer:
        estimated = True
        dense_mean = round(sum(v[0] for v in per_layer.values()) / len(per_layer))
        exp_vals = [v[1] for v in per_layer.values() if v[1]]
        exp_mean = round(sum(exp_vals) / len(exp_vals)) if exp_vals else 0
        moe_missing = bool(exp_vals)
        for il in missing:
            per_layer[il] = [dense_mean, exp_mean if moe_missing else 0]
        notes.append(
            f"the header lists tensors of {n_layer - len(missing)} of {n_layer} layers; the other "
            "layers are assumed to be the size of the average known layer"
        )
    elif missing:
        raise ModelError(f"this GGUF header lists no tensors of {arch}'s {n_layer} layers")
    if not has_output_tensor and not tied and embd == 0:
        notes.append("no token_embd/output tensors in the header; the output layer is not counted")

    n_expert = _scalar(a("expert_count")) or 0
    n_used = _scalar(a("expert_used_count")) or 0
    if estimated and expert_params:
        expert_params = round(expert_params * n_layer / (n_layer - len(missing)))
    if n_expert > 1 and n_used and expert_params:
        active = params - expert_params + round(expert_params * n_used / n_expert)
    else:
        active = params
    shape = ModelShape(
        name=str(get("general.name", arch)),
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=_scalar(a("context_length")) or 0,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=hd_k,
        head_dim_v=hd_v,
        n_ff=_scalar(a("feed_forward_length")) or 0,
        total_params=params,
        active_params=active,
        sliding_window=window,
        swa_layers=_swa_from_header(get, arch, n_layer, window),
        n_expert=n_expert,
        n_expert_used=n_used,
        n_ff_expert=_scalar(a("expert_feed_forward_length")) or 0,
        n_expert_shared=_scalar(a("expert_shared_count")) or 0,
        tied_embeddings=tied,
        source="gguf",
        notes=tuple(notes),
    )
    ftype = _scalar(get("general.file_type"))
    weights = QuantWeights(
        name=quant_name or _file_type_name(ftype),
        file_bytes=int(model.file_size),
        layers=tuple(LayerBytes(per_layer[il][0], per_layer[il][1]) for il in range(n_layer)),
        token_embd_bytes=embd,
        output_bytes=embd if tied else output,
        other_bytes=other,
        tied=tied,
        estimated=estimated,
        notes=tuple(notes),
    )
    return shape, weights


def _file_type_name(ftype: int | None) -> str:
    if ftype is None:
        return "unknown"
    import gguf

    try:
        return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"ftype {ftype}"


# ---------------------------------------------------------------------------------------------
# From architecture facts (catalog entries)


@dataclass(frozen=True, slots=True)
class ParamSplit:
    """Where a model's parameters are: per-layer dense and expert counts, embedding, output."""

    layer_dense: tuple[int, ...]
    layer_experts: tuple[int, ...]
    embd: int
    output: int = field(default=0)

    @property
    def total(self) -> int:
        return sum(self.layer_dense) + sum(self.layer_experts) + self.embd + self.output


def split_params(shape: ModelShape, leading_dense_layers: int = 0) -> ParamSplit:
    """Distribute ``total_params`` over the layers from the totals alone.

    Embedding = n_vocab × n_embd (and as much again for an untied output). For MoE the routed
    expert parameters follow from total P and active A: P_e = (P − A) / (1 − k/E); they sit in
    the layers after ``leading_dense_layers``. The remaining parameters are spread evenly.
    """
    embd = shape.n_vocab * shape.n_embd
    output = 0 if shape.tied_embeddings else embd
    experts_total = 0
    if shape.is_moe and shape.active_params < shape.total_params:
        experts_total = round((shape.total_params - shape.active_params) / (1 - shape.expert_fraction))
    rest = shape.total_params - embd - output - experts_total
    if rest <= 0:
        raise ModelError(
            f"{shape.name}: {shape.total_params:,} parameters do not cover its embedding and experts"
        )
    n = shape.n_layer
    moe_layers = [il for il in range(n) if il >= leading_dense_layers] if experts_total else []
    layer_dense = _spread(rest, range(n), n)
    layer_experts = _spread(experts_total, moe_layers, n)
    return ParamSplit(layer_dense, layer_experts, embd, output)


def _spread(total: int, idx: Iterable[int], n: int) -> tuple[int, ...]:
    idx = list(idx)
    out = [0] * n
    if not idx:
        return tuple(out)
    base, extra = divmod(total, len(idx))
    for j, il in enumerate(idx):
        out[il] = base + (1 if j < extra else 0)
    return tuple(out)


def synthesize_weights(
    shape: ModelShape,
    split: ParamSplit,
    *,
    name: str,
    file_bytes: int,
    bpw_experts: float | None = None,
    bpw_other: float | None = None,
    approx: bool = False,
    estimated: bool = False,
    note: str | None = None,
) -> QuantWeights:
    """Per-layer bytes for a quant known only by its file size: parameters × bits per weight,
    scaled so that the total is the file size. ``bpw_experts``/``bpw_other`` give the relative
    weight of routed experts vs. everything else (mixed quants such as unsloth's dynamic
    DeepSeek quants); without them every parameter counts alike."""
    w_exp = bpw_experts or 1.0
    w_other = bpw_other or 1.0
    if bpw_experts is None or bpw_other is None:
        w_exp = w_other = 1.0
    raw = (sum(split.layer_dense) + split.embd + split.output) * w_other + sum(split.layer_experts) * w_exp
    scale = file_bytes / raw
    layers = tuple(
        LayerBytes(round(d * w_other * scale), round(e * w_exp * scale))
        for d, e in zip(split.layer_dense, split.layer_experts, strict=True)
    )
    embd = round(split.embd * w_other * scale)
    output = embd if shape.tied_embeddings else round(split.output * w_other * scale)
    notes = ("per-layer sizes derived from parameter counts, scaled to the file size",)
    if note:
        notes = (note, *notes)
    return QuantWeights(
        name=name,
        file_bytes=file_bytes,
        layers=layers,
        token_embd_bytes=embd,
        output_bytes=output,
        other_bytes=0,
        tied=shape.tied_embeddings,
        approx=approx,
        estimated=estimated,
        notes=notes,
    )
