"""``kvant setup``: prepare Kvant's folders and the default model (what the first run does)."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, drive, emit
from engine.library import ensure_default_model
from engine.paths import KvantPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("setup", help="prepare the models folder and the default model")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = KvantPaths.default()
    entry = drive(ensure_default_model(paths), args)
    emit(
        args,
        {"home": str(paths.home), "default_model": entry.to_dict()},
        f"Kvant home: {paths.home}\nDefault model ready: {entry.name}\n  {entry.path}",
    )
    return 0
