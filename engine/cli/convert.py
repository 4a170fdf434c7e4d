"""``kvant convert SRC OUT.gguf --preset Q4_K_M``: quantize a GGUF or import a Hugging Face model.

The plan (per tensor: source type -> target type, size, why) is computed first; ``--dry-run`` only
shows it. ``--policy dynamic-1.58`` and ``--override 'REGEX=TYPE'`` change the per-tensor types.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from engine.cli import add_json_flag, drive, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    from engine.convert import POLICIES, PRESETS

    p = subparsers.add_parser(
        "convert",
        help="quantize a GGUF or convert a Hugging Face model folder with llama.cpp's presets",
        description="Quantize SRC (a GGUF file, any shard of a split model, a library id, or a Hugging Face "
        "model folder with config.json and *.safetensors) into OUT.gguf. Tensor types follow llama.cpp's "
        "preset rules exactly; the output appears only when complete.",
    )
    p.add_argument("src", help="source: .gguf path, library id, 'default', or a Hugging Face model folder")
    p.add_argument("out", nargs="?", help="output .gguf path (not needed with --dry-run)")
    p.add_argument(
        "--preset", type=str.upper, help=f"llama.cpp preset (default Q4_K_M): {', '.join(PRESETS)}"
    )
    p.add_argument(
        "--imatrix",
        help="importance matrix (llama.cpp imatrix .gguf or legacy .dat), or 'auto': compute one from a GGUF "
        "source with Kvant's engine over the shipped calibration text first",
    )
    p.add_argument(
        "--imatrix-chunks",
        type=int,
        default=AUTO_IMATRIX_CHUNKS,
        metavar="N",
        help=f"with --imatrix auto: chunks of 512 tokens to run (default {AUTO_IMATRIX_CHUNKS})",
    )
    p.add_argument("--policy", choices=sorted(POLICIES), help="a custom per-tensor policy (see docs)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="RE=TYPE",
        help="tensor type override, e.g. 'ffn_down=Q6_K' (regex searched in tensor names; repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan only; read no tensor data")
    add_json_flag(p)
    p.set_defaults(func=run)


AUTO_IMATRIX_CHUNKS = 16  # 8k tokens of calibration text: a minute or two for a small model


def _auto_imatrix(src: str, args: argparse.Namespace):
    """Compute an importance matrix for the GGUF ``src`` with the engine, saved next to Kvant's cache."""
    from engine.convert import compute_imatrix, load_imatrix
    from engine.errors import KvantError
    from engine.paths import KvantPaths

    if not src.lower().endswith(".gguf"):
        raise KvantError(
            "--imatrix auto needs a GGUF source the engine can run; convert the Hugging Face folder to F16 "
            "first (convert SRC model-f16.gguf --preset F16), then quantize that with --imatrix auto"
        )
    out = KvantPaths.default().cache / "imatrix" / f"{Path(src).stem}.imatrix.gguf"
    if not getattr(args, "json", False):
        print(f"computing an importance matrix over {args.imatrix_chunks} chunks -> {out}", file=sys.stderr)
    result = drive(compute_imatrix(src, out=out, chunks=args.imatrix_chunks, compute_ppl=False), args)
    return load_imatrix(result.path), result


def _source(arg: str) -> str:
    path = Path(arg).expanduser()
    if path.exists():
        return str(path)
    from engine.library import resolve_model
    from engine.paths import KvantPaths

    return str(resolve_model(arg, KvantPaths.default()))


def run(args: argparse.Namespace) -> int:
    from engine.convert import convert
    from engine.convert.core import load_imatrix, open_source
    from engine.errors import KvantError

    src = _source(args.src)
    auto = None
    wants_auto = bool(args.imatrix) and args.imatrix.lower() == "auto"
    if wants_auto and not args.dry_run:
        imatrix, auto = _auto_imatrix(src, args)
    else:
        imatrix = load_imatrix(args.imatrix) if args.imatrix and not wants_auto else None
    source = open_source(src)
    if wants_auto and args.dry_run:  # plan as if computed: the engine collects every blk.* weight
        from engine.convert import Imatrix, ImatrixEntry

        imatrix = Imatrix(
            {t.name: ImatrixEntry(np.ones((1, 1), np.float32), np.ones(1, np.float32)) for t in source.tensors
             if t.name.startswith("blk.")}
        )  # fmt: skip
    try:
        from engine.convert.core import make_plan

        plan = make_plan(source, args.preset, imatrix=imatrix, policy=args.policy, overrides=args.override)
        if args.dry_run:
            emit(args, plan.to_dict(), plan.format_table())
            return 0
        if not args.out:
            raise KvantError("convert needs an output path (OUT.gguf) unless --dry-run is given")
        if not getattr(args, "json", False):
            print(plan.format_table(), file=sys.stderr)
        gen = convert(source, args.out, plan.preset, imatrix, args.policy, plan=plan)
        result = drive(gen, args)
    finally:
        source.close()
    d = {
        "path": str(result.path),
        "seconds": round(result.seconds, 3),
        "source_mb_per_s": round(result.mb_per_s, 2),
        "plan": plan.to_dict(),
    }
    if auto is not None:
        d["imatrix"] = auto.to_dict()
    human = (
        f"wrote {result.path} ({plan.dst_bytes / 2**20:.1f} MiB, {plan.bits_per_weight:.2f} bpw) in "
        f"{result.seconds:.1f} s ({result.mb_per_s:.1f} MB/s of source weights)"
    )
    emit(args, d, human)
    return 0
