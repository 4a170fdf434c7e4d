"""``kvant search QUERY``: GGUF models on the Hugging Face Hub, most downloaded first."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="search the Hugging Face Hub for GGUF models")
    p.add_argument("query", help="words in the model's name, e.g. 'qwen3 4b'")
    p.add_argument("--limit", type=int, default=20, help="at most this many results (default 20)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    from engine.hub import search_models

    models = search_models(args.query, limit=args.limit)
    lines = [f"{'model':56s} {'downloads':>9s} {'likes':>6s} {'params':>7s}"]
    for m in models:
        params = f"{m.parameters / 1e9:.1f}B" if m.parameters else "-"
        gated = "  (gated)" if m.gated else ""
        lines.append(f"{m.id:56s} {_count(m.downloads):>9s} {_count(m.likes):>6s} {params:>7s}{gated}")
    human = "\n".join(lines) if models else f"No GGUF models found for {args.query!r}."
    emit(args, {"query": args.query, "models": [m.to_dict() for m in models]}, human)
    return 0
