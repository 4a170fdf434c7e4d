"""Conversion plans and the streaming conversion itself (see the package docstring)."""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.convert.imatrix import Imatrix, load_imatrix
from engine.convert.policy import Policy, bind, get_policy
from engine.convert.rules import (
    FTYPES,
    TensorIn,
    allows_quantization,
    choose_types,
    is_quantized,
    llama_order,
    requires_imatrix,
    resolve_preset,
    type_by_name,
)
from engine.convert.source import GGUFSource, Source, SourceTensor
from engine.errors import KvantError, QuantError
from engine.gguf import MetadataValue, TensorSpec, write_gguf
from engine.gguf.constants import block_geometry
from engine.progress import CancelToken, Progress
from engine.quant import format_of, quantize

KEY_QUANT_VERSION = "general.quantization_version"
KEY_FILE_TYPE = "general.file_type"
GGML_QNT_VERSION = 2
_CHUNK_ELEMS = 1 << 22  # float32 elements quantized between cancel checks (16 MiB)


@dataclass(frozen=True, slots=True)
class TensorPlan:
    """One tensor of a conversion: where it comes from and what it becomes."""

    name: str
    shape: tuple[int, ...]  # NumPy order
    src_type: str
    dst_type: str
    src_bytes: int
    dst_bytes: int
    reason: str
    imatrix: bool = False

    @property
    def copy(self) -> bool:
        return self.src_type == self.dst_type

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "source_type": self.src_type,
            "target_type": self.dst_type,
            "source_bytes": self.src_bytes,
            "bytes": self.dst_bytes,
            "reason": self.reason,
            "imatrix": self.imatrix,
        }


@dataclass
class ConvertPlan:
    """Everything a conversion will do, computed before any data is read."""

    source: str
    preset: str
    ftype: int
    tensors: list[TensorPlan]
    metadata: dict[str, MetadataValue]
    policy: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing_imatrix: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def src_bytes(self) -> int:
        return sum(t.src_bytes for t in self.tensors)

    @property
    def dst_bytes(self) -> int:
        return sum(t.dst_bytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        n = self.n_elements
        return self.dst_bytes * 8 / n if n else 0.0

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.dst_type] = out.get(t.dst_type, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "preset": self.preset,
            "file_type": self.ftype,
            "policy": self.policy,
            "overrides": [f"{p}={t}" for p, t in self.overrides],
            "source_bytes": self.src_bytes,
            "bytes": self.dst_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "types": self.type_counts(),
            "warnings": list(self.warnings),
            "missing_imatrix": list(self.missing_imatrix),
            "unsupported": list(self.unsupported),
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def format_table(self) -> str:
        w = max([len(t.name) for t in self.tensors] + [6])
        lines = [f"{'tensor':<{w}}  {'shape':<18} {'from':>7} -> {'to':<7} {'MiB':>9}  reason"]
        for t in self.tensors:
            shape = "x".join(str(d) for d in t.shape)
            lines.append(
                f"{t.name:<{w}}  {shape:<18} {t.src_type:>7} -> {t.dst_type:<7} "
                f"{t.dst_bytes / 2**20:9.2f}  {t.reason}"
            )
        mix = ", ".join(f"{k} {v}" for k, v in self.type_counts().items())
        lines.append(
            f"{len(self.tensors)} tensors, {self.src_bytes / 2**20:.2f} MiB -> "
            f"{self.dst_bytes / 2**20:.2f} MiB "
            f"({self.bits_per_weight:.2f} bpw); preset {self.preset}"
            + (f", policy {self.policy}" if self.policy else "")
            + f"; types: {mix}"
        )
        for msg in self.warnings:
            lines.append(f"warning: {msg}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ConvertProgress(Progress):
    """Progress of a conversion: ``done``/``total`` are bytes of source weights processed."""

    index: int = 0  # tensors finished
    count: int = 0  # tensors in all
    tensor: str = ""
    written: int = 0  # bytes of output written
    eta_s: float | None = None
    warning: str = ""


@dataclass(frozen=True, slots=True)
class ConvertResult:
    path: Path
    plan: ConvertPlan
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.plan.src_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def parse_override(text: str) -> tuple[str, T]:
    """``'ffn_down=Q6_K'`` -> (regex, type); the regex is searched in tensor names, as llama.cpp does."""
    if "=" not in text:
        raise QuantError(f"Override {text!r} must look like REGEX=TYPE, e.g. 'ffn_down=Q6_K'.")
    pattern, _, typ = text.rpartition("=")
    if not pattern:
        raise QuantError(f"Override {text!r} has no tensor pattern before '='.")
    try:
        re.compile(pattern)
    except re.error as err:
        raise QuantError(f"Override {text!r}: bad regular expression: {err}.") from None
    return pattern.lower(), type_by_name(typ)


def open_source(src: str | Path | Source) -> Source:
    """A GGUF file (or shard) or a Hugging Face model folder as a conversion source."""
    if not isinstance(src, str | Path):
        return src
    path = Path(src)
    if path.is_dir():
        from engine.convert.hf import HFSource

        return HFSource(path)
    return GGUFSource(path)


def _type_name(t: int) -> str:
    return T(t).name


def _bytes_for(dims: Sequence[int], t: int) -> int:
    block, size = block_geometry(t)
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def make_plan(
    source: Source,
    preset: str | None = None,
    *,
    imatrix: Imatrix | None = None,
    policy: str | Policy | None = None,
    overrides: Sequence[str | tuple[str, T]] = (),
) -> ConvertPlan:
    """The conversion plan: per tensor, in output order, the source and target type and sizes.

    ``preset`` None means Q4_K_M, or the policy's own file type when a policy is given.
    """
    pol = get_policy(policy)
    if preset is None:
        preset = pol.preset(imatrix is not None) if pol is not None else "Q4_K_M"
    preset = resolve_preset(preset)
    ftype = FTYPES[preset][0]
    hp = source.hparams()
    ovs = [parse_override(o) if isinstance(o, str) else (o[0], T(o[1])) for o in overrides]
    by_name = {t.name: t for t in source.tensors}
    policy_fn = bind(pol, hp, imatrix is not None, "output.weight" not in by_name)
    order = [by_name[n] for n in llama_order(list(by_name))]
    choices = choose_types(
        [TensorIn(t.name, t.dims, t.type) for t in order],
        hp,
        preset,
        has_imatrix=imatrix is not None,
        overrides=ovs,
        policy=policy_fn,
    )
    tensors: list[TensorPlan] = []
    missing: list[str] = []
    unsupported: set[str] = set()
    warnings: list[str] = []
    requant: set[str] = set()
    for t, ch in zip(order, choices, strict=True):
        dst = int(ch.type)
        use_im = False
        if dst != t.type:
            if is_quantized(t.type):
                requant.add(_type_name(t.type))
            fmt = format_of(dst)
            if fmt.quantize is None:
                unsupported.add(fmt.name)
            if imatrix is not None and t.name in imatrix:
                use_im = fmt.uses_imatrix
            if requires_imatrix(t.name, T(dst), preset) and (imatrix is None or t.name not in imatrix):
                missing.append(t.name)
        tensors.append(
            TensorPlan(
                name=t.name,
                shape=t.shape,
                src_type=_type_name(t.type),
                dst_type=_type_name(dst),
                src_bytes=t.nbytes,
                dst_bytes=_bytes_for(t.dims, dst),
                reason=ch.reason,
                imatrix=use_im,
            )
        )
    if requant:
        warnings.append(
            f"the source is already quantized ({', '.join(sorted(requant))}): its tensors are "
            "dequantized and quantized again, so quantization errors compound; convert from "
            "F32/F16/BF16 when you can"
        )
    if missing:
        warnings.append(
            f"{len(missing)} tensor(s) need an importance matrix for their type (e.g. {missing[0]}); "
            "pass one with --imatrix"
        )
    if unsupported:
        warnings.append(f"Kvant cannot quantize to {', '.join(sorted(unsupported))} yet")
    meta = {
        k: v
        for k, v in source.metadata.items()
        if not k.startswith("split.") and k not in (KEY_QUANT_VERSION, KEY_FILE_TYPE)
    }
    meta[KEY_QUANT_VERSION] = MetadataValue(V.UINT32, GGML_QNT_VERSION)
    meta[KEY_FILE_TYPE] = MetadataValue(V.UINT32, ftype)
    return ConvertPlan(
        source=source.description,
        preset=preset,
        ftype=ftype,
        tensors=tensors,
        metadata=meta,
        policy=pol.name if pol is not None else None,
        overrides=[(p, T(t).name) for p, t in ovs],
        warnings=warnings,
        missing_imatrix=missing,
        unsupported=sorted(unsupported),
    )


def plan_conversion(
    src: str | Path | Source,
    preset: str | None = None,
    *,
    imatrix: str | Path | Imatrix | None = None,
    policy: str | Policy | None = None,
    overrides: Sequence[str | tuple[str, T]] = (),
) -> ConvertPlan:
    """Open ``src`` and compute its :class:`ConvertPlan` (what ``--dry-run`` shows)."""
    source = open_source(src)
    try:
        im = load_imatrix(imatrix) if isinstance(imatrix, str | Path) else imatrix
        return make_plan(source, preset, imatrix=im, policy=policy, overrides=overrides)
    finally:
        if source is not src:
            source.close()


def _imatrix_for(im: Imatrix | None, t: SourceTensor, p: TensorPlan) -> np.ndarray | None:
    if im is None or not p.imatrix:
        return None
    vals = im.values(t.name)
    n_mat = t.dims[2] if len(t.dims) > 2 else 1
    if vals is None:
        return None
    if vals.size != t.dims[0] * n_mat:
        if t.name in ("token_embd.weight", "per_layer_token_embd.weight"):
            return None
        raise KvantError(
            f"importance matrix entry {t.name} has {vals.size} values, the tensor needs {t.dims[0] * n_mat} "
            "(was the imatrix made for another model?)"
        )
    if not np.all(np.isfinite(vals)):
        raise KvantError(f"importance matrix entry {t.name} contains non-finite values")
    return vals.reshape(n_mat, t.dims[0])


def _convert_tensor(
    source: Source, t: SourceTensor, p: TensorPlan, im: Imatrix | None, cancel: CancelToken | None
) -> np.ndarray:
    """Quantize one tensor chunk by chunk (rows), checking ``cancel`` between chunks."""
    ne0 = t.dims[0]
    rows_per_mat = t.dims[1] if len(t.dims) > 1 else 1
    n_rows = t.n_rows
    n_mat = max(1, n_rows // rows_per_mat)
    im_mat = _imatrix_for(im, t, p)
    dst = T[p.dst_type]
    row_bytes = p.dst_bytes // n_rows
    out = np.empty(p.dst_bytes, dtype=np.uint8)
    step = max(1, _CHUNK_ELEMS // ne0)
    for m in range(n_mat):
        w = None if im_mat is None else im_mat[m]
        base = m * rows_per_mat
        for r0 in range(base, base + rows_per_mat, step):
            if cancel is not None:
                cancel.raise_if_cancelled()
            r1 = min(base + rows_per_mat, r0 + step)
            x = np.ascontiguousarray(source.read_rows(t.name, r0, r1), dtype=np.float32)
            q = quantize(x, dst, w)
            out[r0 * row_bytes : r1 * row_bytes] = q.reshape(-1)
    return out


def convert(
    src: str | Path | Source,
    out: str | Path,
    preset: str | None = None,
    imatrix: str | Path | Imatrix | None = None,
    policy: str | Policy | None = None,
    cancel: CancelToken | None = None,
    *,
    overrides: Sequence[str | tuple[str, T]] = (),
    plan: ConvertPlan | None = None,
) -> Generator[ConvertProgress, None, ConvertResult]:
    """Convert ``src`` to a GGUF at ``out``, yielding :class:`ConvertProgress`; returns a ConvertResult.

    Nothing appears at ``out`` until the whole file is written; a cancel or an error leaves nothing.
    """
    started = time.monotonic()
    source = open_source(src)
    try:
        im = load_imatrix(imatrix) if isinstance(imatrix, str | Path) else imatrix
        if plan is None:
            plan = make_plan(source, preset, imatrix=im, policy=policy, overrides=overrides)
        if plan.unsupported:
            raise QuantError(
                f"Cannot convert with preset {plan.preset}: Kvant cannot quantize to "
                f"{', '.join(plan.unsupported)} yet."
            )
        if plan.missing_imatrix:
            raise QuantError(
                f"Preset {plan.preset} needs an importance matrix: tensor {plan.missing_imatrix[0]} "
                "becomes a very low-bit type and would be garbage without one. Pass --imatrix FILE."
            )
        count = len(plan.tensors)
        for msg in plan.warnings:
            yield ConvertProgress("warning", 0, plan.src_bytes, msg, count=count, warning=msg)
        by_name = {t.name: t for t in source.tensors}
        plans = {p.name: p for p in plan.tensors}
        specs = [TensorSpec(p.name, int(T[p.dst_type]), by_name[p.name].dims) for p in plan.tensors]
        state = {"index": 0, "src_done": 0, "tensor": ""}

        def data(spec: TensorSpec) -> Any:
            p = plans[spec.name]
            t = by_name[spec.name]
            state["tensor"] = spec.name
            buf = source.read_raw(spec.name) if p.copy else _convert_tensor(source, t, p, im, cancel)
            state["index"] += 1
            state["src_done"] += p.src_bytes
            return buf

        total = plan.src_bytes
        writer = write_gguf(out, plan.metadata, specs, data, cancel=cancel)
        try:
            while True:
                try:
                    ev = next(writer)
                except StopIteration as stop:
                    paths = stop.value
                    break
                done = state["src_done"]
                elapsed = time.monotonic() - started
                eta = elapsed / done * (total - done) if done else None
                yield ConvertProgress(
                    "convert",
                    done,
                    total,
                    f"{state['tensor']} ({state['index']}/{count})",
                    index=state["index"],
                    count=count,
                    tensor=str(state["tensor"]),
                    written=ev.done,
                    eta_s=eta,
                )
        finally:
            writer.close()  # removes the temporary file unless the writer finished
        return ConvertResult(Path(paths[0]), plan, time.monotonic() - started)
    finally:
        if source is not src:
            source.close()


def convert_sync(*args: Any, **kwargs: Any) -> ConvertResult:
    """Run :func:`convert` to completion, ignoring progress."""
    gen = convert(*args, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


__all__ = [
    "ConvertPlan",
    "ConvertProgress",
    "ConvertResult",
    "TensorPlan",
    "allows_quantization",
    "convert",
    "convert_sync",
    "make_plan",
    "open_source",
    "parse_override",
    "plan_conversion",
]
