"""``kvant models``: the models in the library."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, emit
from engine.library import Library
from engine.paths import KvantPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the models in the library")
    p.add_argument("--scan", action="store_true", help="first add GGUFs of HF cache/LM Studio/Ollama")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = KvantPaths.default()
    if getattr(args, "scan", False):
        from engine.hub import scan_and_import

        scan_and_import(Library(paths.library_file))
    entries = Library(paths.library_file).entries()
    lines = [f"{e.id:32s} {e.size / 2**20:9.1f} MiB  {e.name}" for e in entries]
    human = "\n".join(lines) if lines else "The library is empty: run `python main.py setup`."
    emit(args, {"models": [e.to_dict() for e in entries]}, human)
    return 0
