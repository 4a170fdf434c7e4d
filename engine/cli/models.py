"""``kvant models``: the models in the library."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, emit
from engine.library import Library
from engine.paths import KvantPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the models in the library")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = KvantPaths.default()
    entries = Library(paths.library_file).entries()
    lines = [f"{e.id:32s} {e.size / 2**20:9.1f} MiB  {e.name}" for e in entries]
    human = "\n".join(lines) if lines else "The library is empty: run `python main.py setup`."
    emit(args, {"models": [e.to_dict() for e in entries]}, human)
    return 0
