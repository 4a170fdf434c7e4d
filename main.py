"""Kvant's entry point: the desktop app by default, the command line with a subcommand.

python main.py                 # open the app (prepares the default model on first run)
python main.py MODEL.gguf      # open the app with that model
python main.py info MODEL      # CLI subcommands; each takes --json
python main.py --version
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _wants_gui(argv: Sequence[str]) -> bool:
    return not argv or (len(argv) == 1 and argv[0].lower().endswith(".gguf"))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if _wants_gui(args):
        from gui.app import run_gui

        return run_gui(open_path=args[0] if args else None)
    from engine.cli import run_cli

    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
