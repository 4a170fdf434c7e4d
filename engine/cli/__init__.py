"""Kvant's command line: ``python main.py SUBCOMMAND ...``.

Each subcommand lives in its own module of this package with a ``register(subparsers)``
function that adds its parser and sets ``func`` (``func(args) -> int``); modules are
discovered, so adding a subcommand means adding a module. Every subcommand accepts
``--json`` and then prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator, Sequence
from typing import Any, TypeVar

from engine import __version__
from engine.errors import KvantError
from engine.progress import Progress

T = TypeVar("T")

# Listed first in help, in this order; every other module of this package with a register() follows.
PREFERRED_ORDER = ("setup", "models", "info", "hw")


def subcommand_modules() -> list[str]:
    """The modules of this package that define subcommands (each has ``register``)."""
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    ordered = [n for n in PREFERRED_ORDER if n in names] + sorted(
        n for n in names if n not in PREFERRED_ORDER
    )
    return [f"{__name__}.{n}" for n in ordered]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON document")


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else the human-readable text."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(human.rstrip("\n") + "\n")


def drive(gen: Generator[Progress, None, T], args: argparse.Namespace) -> T:
    """Run an engine generator to completion, drawing its progress on stderr; returns its result.

    Ctrl-C sets nothing special: the generator is closed, so its temp files are removed.
    """
    quiet = getattr(args, "json", False) or not sys.stderr.isatty()
    last = ""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if quiet:
                continue
            frac = event.fraction
            line = f"{event.message or event.stage}: " + (
                f"{frac * 100:5.1f}%" if frac is not None else f"{event.done}"
            )
            if line != last:
                sys.stderr.write("\r" + line.ljust(60))
                last = line
    finally:
        gen.close()
        if last:
            sys.stderr.write("\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="kvant",
        description="Kvant: fit, get, convert, chat with and measure quantized LLMs. "
        "Without a subcommand the desktop app opens.",
    )
    parser.add_argument("--version", action="version", version=f"Kvant {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in subcommand_modules():
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def run_cli(argv: Sequence[str]) -> int:
    """Run one CLI invocation; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KvantError as err:
        if getattr(args, "json", False):
            emit(args, {"error": type(err).__name__, "message": str(err)}, "")
        else:
            print(f"kvant: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kvant: interrupted", file=sys.stderr)
        return 130
