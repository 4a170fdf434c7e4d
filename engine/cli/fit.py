"""``kvant fit MODEL``: will it run here (or on machine X), where do the layers go, how fast."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli import add_json_flag, emit
from engine.errors import KvantError, ModelError
from engine.fit import (
    CalibrationStore,
    CatalogModel,
    FitPlan,
    HardwareProfile,
    Recommendation,
    describe_gguf,
    load_catalog,
    plan,
    recommend,
)
from engine.fit.shape import KV_TYPE_BYTES
from engine.paths import KvantPaths


def _floats(values: list[str] | None) -> list[float]:
    out: list[float] = []
    for v in values or []:
        for part in v.split(","):
            part = part.strip()
            if part:
                try:
                    out.append(float(part))
                except ValueError:
                    raise KvantError(f"{part!r} is not a number") from None
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit",
        help="what fits this machine (or another one): placement, verdict, tok/s, best quant",
        description="Plan a model on this machine, or on a machine described by --ram-gb/--vram-gb/...",
    )
    p.add_argument(
        "model",
        help="a .gguf path, a library id, 'default', or a catalog id REPO[:QUANT] "
        "(e.g. unsloth/DeepSeek-R1-GGUF:UD-IQ1_S)",
    )
    p.add_argument("--quant", help="quant of a catalog model (without it: a table of all quants)")
    p.add_argument("--ctx", type=int, help="context length (default: min(4096, training context))")
    p.add_argument(
        "--kv-type", default="f16", choices=[k for k in KV_TYPE_BYTES if k in ("f16", "q8_0", "q4_0")]
    )
    p.add_argument("--ram-gb", type=float, help="RAM of the machine to plan for (GiB)")
    p.add_argument("--ram-available-gb", type=float, help="RAM free for the model (default: all of --ram-gb)")
    p.add_argument(
        "--vram-gb", action="append", help="VRAM of a GPU (GiB); repeat or give a comma list for several GPUs"
    )
    p.add_argument("--disk-gb", type=float, help="free disk space (GiB)")
    p.add_argument("--bandwidth-gbs", type=float, help="CPU memory bandwidth (GB/s)")
    p.add_argument(
        "--gpu-bandwidth-gbs", action="append", help="GPU memory bandwidth (GB/s), per GPU or one for all"
    )
    p.add_argument("--gpu-name", action="append", help="GPU model name(s), to look up their bandwidth")
    p.add_argument("--disk-bandwidth-gbs", type=float, help="disk read speed (GB/s; default 3, NVMe)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _profile(args: argparse.Namespace) -> tuple[HardwareProfile, bool]:
    """The machine to plan for, and whether it is this real machine."""
    vram = _floats(args.vram_gb)
    gpu_bw = _floats(args.gpu_bandwidth_gbs)
    names = [n for v in (args.gpu_name or []) for n in v.split(",") if n.strip()]
    overrides = any(
        x is not None and x != []
        for x in (args.ram_gb, args.vram_gb, args.disk_gb, args.bandwidth_gbs, args.gpu_bandwidth_gbs,
                  args.disk_bandwidth_gbs, args.ram_available_gb, args.gpu_name)
    )  # fmt: skip
    if args.ram_gb is not None:
        return (
            HardwareProfile.custom(
                ram_gb=args.ram_gb,
                ram_available_gb=args.ram_available_gb,
                vram_gb=vram,
                disk_gb=args.disk_gb,
                cpu_bandwidth_gbs=args.bandwidth_gbs,
                gpu_bandwidth_gbs=gpu_bw or None,
                disk_bandwidth_gbs=args.disk_bandwidth_gbs,
                gpu_names=names or None,
            ),
            False,
        )
    from engine.hardware import detect

    hw = HardwareProfile.from_hardware_info(detect(bandwidth=True))
    if not overrides:
        return hw, True
    # Some numbers overridden on top of this machine.
    custom = HardwareProfile.custom(
        ram_gb=hw.ram_total_bytes / 2**30,
        ram_available_gb=(args.ram_available_gb if args.ram_available_gb is not None
                          else hw.ram_available_bytes / 2**30),
        vram_gb=vram or [g.vram_free_bytes / 2**30 for g in hw.gpus],
        disk_gb=args.disk_gb if args.disk_gb is not None else (
            None if hw.disk_free_bytes is None else hw.disk_free_bytes / 2**30),
        cpu_bandwidth_gbs=args.bandwidth_gbs or hw.cpu_bandwidth_bytes_per_s / 1e9,
        gpu_bandwidth_gbs=gpu_bw or ([g.bandwidth_bytes_per_s / 1e9 for g in hw.gpus] if not vram else None),
        disk_bandwidth_gbs=args.disk_bandwidth_gbs,
        gpu_names=names or ([g.name for g in hw.gpus] if not vram else None),
        name="this machine, modified",
    )  # fmt: skip
    return custom, False


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _machine_line(hw: HardwareProfile) -> str:
    gpus = ", ".join(f"{g.name} {_gib(g.vram_free_bytes)} free" for g in hw.gpus) or "no GPU"
    disk = "" if hw.disk_free_bytes is None else f", disk {_gib(hw.disk_free_bytes)} free"
    return (
        f"{hw.name}: RAM {_gib(hw.ram_available_bytes)} available of {_gib(hw.ram_total_bytes)}, "
        f"{gpus}{disk}; "
        f"bandwidth CPU {hw.cpu_bandwidth_bytes_per_s / 1e9:.0f} GB/s"
        + "".join(f", {g.name} {g.bandwidth_bytes_per_s / 1e9:.0f} GB/s" for g in hw.gpus)
        + f", disk {hw.disk_bandwidth_bytes_per_s / 1e9:.1f} GB/s"
    )


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plan_text(p: FitPlan, hw: HardwareProfile) -> str:
    rows = [
        ["device", "usable", "weights", "KV cache", "buffers", "left", "layers", "read/token", "ms/token"]
    ]
    for d in p.devices:
        layers = f"{len(d.layers)}" + (
            f" (+experts of {len(d.expert_layers)})" if d.expert_layers != d.layers else ""
        )
        if d.holds_output:
            layers += " + output"
        rows.append([
            f"{d.device} {d.name}" if d.device != "cpu" else "cpu RAM",
            _gib(max(0, d.budget_bytes)),
            _gib(d.weights_bytes),
            _gib(d.kv_bytes),
            _gib(d.compute_bytes + d.output_buffer_bytes),
            _gib(d.free_bytes),
            layers,
            _gib(d.bytes_per_token),
            f"{d.seconds_per_token * 1000:.1f}",
        ])  # fmt: skip
    if p.paged_bytes:
        rows.append(
            ["disk (mmap)", "", _gib(p.paged_bytes), "", "", "", "", _gib(p.disk_bytes_per_token), ""]
        )
    head = (
        f"{p.model} {p.quant} ({_gib(p.file_bytes)}), "
        f"context {p.n_ctx:,}, KV {p.kv_type} ({_gib(p.kv_bytes)})\n"
        f"{_machine_line(hw)}\n\n"
        f"verdict: {p.verdict.label}\n{p.sentence}\n\n"
    )
    notes = "\n".join(f"note: {n}" for n in p.notes)
    return head + _table(rows) + ("\n\n" + notes if notes else "")


def _gpu_layers(p: FitPlan) -> str:
    pl = p.placement
    text = f"{pl.gpu_layers}/{pl.n_layer}"
    if pl.strategy == "experts_on_cpu":
        text += f" (experts {pl.gpu_expert_layers})"
    return text


def _rec_text(rec: Recommendation, hw: HardwareProfile, n_ctx: int, kv_type: str) -> str:
    rows = [["quant", "size", "bpw", "KLD", "verdict", "GPU layers", "tok/s", "left", "fit"]]
    for o in rec.options:
        p = o.plan
        size = _gib(o.file_bytes) + ("~" if o.approx else "") + (" est." if o.estimated else "")
        mark = " <- recommended" if rec.best is o else ""
        rows.append([
            o.quant,
            size,
            f"{o.bits_per_weight:.2f}",
            "-" if o.kld is None else f"{o.kld:g}",
            p.verdict.label,
            _gpu_layers(p),
            f"{p.tok_s:.1f}",
            f"{p.headroom_fraction * 100:.0f}%",
            o.tier.value + mark,
        ])  # fmt: skip
    return (
        f"{rec.model}, context {n_ctx:,}, KV {kv_type}\n{_machine_line(hw)}\n\n"
        + _table(rows)
        + f"\n\n{rec.reason}\n(~ size rounded as published; est. = estimated from params x typical bpw)"
    )


def _resolve(spec: str) -> tuple[str, Any]:
    """('file', path) or ('catalog', (model, quant))."""
    if ":" not in spec or Path(spec).exists():
        from engine.library import resolve_model

        try:
            return "file", resolve_model(spec, KvantPaths.default())
        except ModelError:
            pass
    catalog = load_catalog(paths=KvantPaths.default())
    try:
        return "catalog", catalog.find(spec)
    except ModelError:
        raise ModelError(
            f"{spec!r} is not a file, a library model or a catalog model "
            f"(catalog ids look like unsloth/DeepSeek-R1-GGUF or llama-3.1-8b)"
        ) from None


def run(args: argparse.Namespace) -> int:
    kind, target = _resolve(args.model)
    hw, real = _profile(args)
    store = CalibrationStore.default() if real else None
    kw: dict[str, Any] = {"n_ctx": args.ctx, "kv_type": args.kv_type}

    def corrected(model: str, quant: str) -> dict[str, Any]:
        if store is None:
            return {}
        c = store.correction(hw.key, model, quant)
        return {"correction": c.tok_s, "buffer_factor": c.buffers} if c.samples else {}

    if kind == "file":
        from engine.gguf import open_gguf

        if args.quant:
            raise KvantError("--quant applies to catalog models; a file is one quant already")
        with open_gguf(target) as model:
            shape, weights = describe_gguf(model)
        p = plan(shape, weights, hw, on_disk=True, **kw, **corrected(shape.name, weights.name))
        emit(args, {"source": str(target), "hardware": hw.to_dict(), "plan": p.to_dict()}, _plan_text(p, hw))
        return 0

    entry, quant = target
    assert isinstance(entry, CatalogModel)
    quant = args.quant or quant
    shape = entry.shape()
    if quant:
        weights = entry.weights(quant)
        p = plan(shape, weights, hw, **kw, **corrected(shape.name, weights.name))
        emit(
            args,
            {"source": entry.id, "hardware": hw.to_dict(), "model": entry.to_dict(), "plan": p.to_dict()},
            _plan_text(p, hw),
        )
        return 0
    quants = [(entry.weights(q), q.kld) for q in entry.quants]
    rec = recommend(shape, quants, hw, **kw)
    n_ctx = rec.options[0].plan.n_ctx if rec.options else (args.ctx or 0)
    emit(
        args,
        {
            "source": entry.id,
            "hardware": hw.to_dict(),
            "model": entry.to_dict(),
            "recommendation": rec.to_dict(),
        },
        _rec_text(rec, hw, n_ctx, args.kv_type),
    )
    return 0
