"""Quantization error table: size, bits per weight, PPL, KLD and same-top rate of quants against a base.

Usage:
    python benchmarks/bench_eval.py QUANT.gguf [QUANT.gguf ...] [--base BASE.gguf]
    python benchmarks/bench_eval.py --presets Q8_0 Q6_K Q4_K_M ... [--base BASE.gguf] [--keep DIR]
    python benchmarks/bench_eval.py --presets all            # every preset Kvant can make without an imatrix
    python benchmarks/bench_eval.py --presets all --imatrix IMATRIX.gguf    # ... and those that need one

BASE defaults to the default model (Gemma 3 270M Q4_K_M). ``--presets`` requantizes BASE with
``engine.convert`` into a temporary folder (or ``--keep DIR``) first; presets that need an importance
matrix (the low-bit IQ ones) get ``--imatrix`` (e.g. from ``python main.py imatrix default -o
IM.gguf``), only those: the others are made without one, as llama-quantize makes them without
``--imatrix``. Presets that need an imatrix when none is given, or a type Kvant cannot write, are
skipped and listed. The base runs once (its log-probabilities go to a llama.cpp-format base-logits file,
~134 MB per 512-token chunk), then each quant is compared with it on the shipped text (``--text`` for
another), ``--ctx`` tokens per chunk, ``--chunks`` chunks. Prints a Markdown table (``--json`` for the
raw results).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_BASE = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"


def drain(gen, label: str = ""):
    last = 0.0
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        now = time.monotonic()
        if label and now - last > 10:
            print(f"  {label}: {getattr(ev, 'message', '') or ev.stage}", file=sys.stderr, flush=True)
            last = now


def table_row(q: Path, info, r) -> str:
    return (
        f"| {info.file_type or q.stem}{' (imatrix)' if q.stem.endswith('-imatrix') else ''} "
        f"| {info.file_size / 2**20:.1f} | {info.bits_per_weight:.2f} "
        f"| {r.ppl_quant:.3f} ± {r.ppl_quant_err:.3f} | {r.ppl_ratio:.4f} | {r.kld.mean:.5f} "
        f"| {r.kld.median:.5f} | {r.kld.percentile(99.0):.4f} | {100 * r.same_top:.2f}% "
        f"| {100 * r.dp.rms:.2f}% |"
    )


def make_quants(
    base: Path, presets: list[str], out_dir: Path, imatrix: Path | None = None
) -> tuple[list[Path], list[str]]:
    from engine.convert import PRESETS, convert, load_imatrix, plan_conversion

    if presets == ["all"]:
        presets = [p for p in PRESETS if p not in ("F32", "F16", "BF16")]
    im = load_imatrix(imatrix) if imatrix else None
    made, skipped = [], []
    for preset in presets:
        plan = plan_conversion(base, preset)
        used_im = None
        if plan.missing_imatrix and im is not None:
            plan = plan_conversion(base, preset, imatrix=im)
            used_im = im
        if plan.unsupported or plan.missing_imatrix:
            why = (
                "needs an imatrix" if plan.missing_imatrix else f"cannot write {', '.join(plan.unsupported)}"
            )
            skipped.append(f"{preset} ({why})")
            continue
        out = out_dir / f"{base.stem}-{preset}{'-imatrix' if used_im is not None else ''}.gguf"
        if not out.exists():
            t = time.perf_counter()
            drain(convert(base, out, preset, imatrix=used_im, plan=plan), f"convert {preset}")
            print(f"{preset}: converted in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        made.append(out)
    return made, skipped


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("quants", nargs="*", type=Path)
    ap.add_argument("--base", type=Path, default=DEFAULT_BASE)
    ap.add_argument("--presets", nargs="+", default=[])
    ap.add_argument("--keep", type=Path, default=None, help="folder for the requantized files (kept)")
    ap.add_argument("--imatrix", type=Path, default=None, help="importance matrix for presets that need one")
    ap.add_argument("--convert-only", action="store_true", help="make the --presets files and stop")
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from engine.errors import KvantError
    from engine.eval import DEFAULT_TEXT, evaluate
    from engine.gguf import read_model_info

    text = (args.text or DEFAULT_TEXT).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="kvant-bench-eval-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        quants = list(args.quants)
        skipped: list[str] = []
        if args.presets:
            made, skipped = make_quants(args.base, args.presets, work, args.imatrix)
            quants += made
            if args.convert_only:
                print("\n".join(map(str, made)) + (f"\nSkipped: {', '.join(skipped)}" if skipped else ""))
                return 0
        if not quants:
            ap.error("give QUANT files or --presets")
        cache = Path(tmp) / "base.logits"
        rows = []
        base_info = read_model_info(args.base)
        for q in quants:
            try:
                gen = evaluate(args.base, q, text, args.ctx, None, cache, n_chunks=args.chunks)
                res = drain(gen, f"eval {q.name}")
            except KvantError as err:  # e.g. a tensor type the CPU engine has no kernel for yet
                skipped.append(f"{q.name} ({err})")
                print(f"{q.name}: skipped: {err}", file=sys.stderr, flush=True)
                continue
            info = read_model_info(q)
            rows.append((q, info, res))
            print(
                f"{q.name}: PPL {res.ppl_quant:.4f}, KLD {res.kld.mean:.6f}, same top {res.same_top:.4f}"
                f"\n  row: {table_row(q, info, res)}",
                file=sys.stderr,
                flush=True,
            )
    if args.json:
        out = {
            "base": str(args.base),
            "ctx": args.ctx,
            "chunks": args.chunks,
            "skipped": skipped,
            "results": [{"file": str(q), "bpw": i.bits_per_weight, **r.to_dict()} for q, i, r in rows],
        }
        print(json.dumps(out, indent=2))
        return 0
    r0 = rows[0][2]
    print(
        f"Base: {args.base.name} ({base_info.file_type}, {base_info.file_size / 2**20:.1f} MiB, "
        f"{base_info.bits_per_weight:.2f} bpw), PPL {r0.ppl_base:.4f} ± {r0.ppl_base_err:.4f}; "
        f"{r0.n_chunks} chunks of {r0.n_ctx} ({r0.n_tokens} scored tokens)\n"
    )
    print(
        "| quant | size MiB | bpw | PPL | PPL ratio | mean KLD | median KLD | 99% KLD | same top | RMS Δp |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for q, info, r in sorted(rows, key=lambda x: -x[1].bits_per_weight):
        print(table_row(q, info, r))
    if skipped:
        print(f"\nSkipped: {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
