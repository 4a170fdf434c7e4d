"""``kvant download REPO [--quant Q]``: list a repo's GGUF quants, or download one into the library."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, drive, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "download",
        help="list a Hugging Face repo's GGUF quants, or download one (resumable, checksum-verified)",
    )
    p.add_argument("repo", help="a Hub model repository, e.g. unsloth/Qwen3-4B-GGUF")
    p.add_argument("--quant", help="the quant to download (Q4_K_M, UD-IQ1_S, ...); without it, list them")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    from engine.hub import download_quant, list_quants, select_quant
    from engine.paths import KvantPaths

    quants = list_quants(args.repo, revision=args.revision)
    if not args.quant:
        lines = [f"{'quant':14s} {'size':>10s} {'bpw':>5s} files"]
        for q in quants:
            bpw = q.bits_per_weight()
            files = f"{len(q.files)}" + ("" if q.complete else f" of {q.shard_count} (incomplete)")
            lines.append(
                f"{q.name:14s} {_size(q.size):>10s} {bpw if bpw else '-':>5} {files}  {q.first.path}"
            )
        human = "\n".join(lines) if quants else f"{args.repo} has no GGUF files."
        if quants:
            human += f"\n\nDownload one with: python main.py download {args.repo} --quant {quants[0].name}"
        emit(args, {"repo": args.repo, "quants": [q.to_dict() for q in quants]}, human)
        return 0
    quant = select_quant(quants, args.quant, args.repo)
    entry = drive(download_quant(args.repo, quant, paths=KvantPaths.default(), revision=args.revision), args)
    human = (
        f"Downloaded {quant.name} of {args.repo} ({_size(quant.size)}, sha256 verified).\n"
        f"{entry.id:32s} {entry.size / 2**20:9.1f} MiB  {entry.name}\n{entry.path}"
    )
    emit(args, {"repo": args.repo, "quant": quant.to_dict(), "model": entry.to_dict()}, human)
    return 0
