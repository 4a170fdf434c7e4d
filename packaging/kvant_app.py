"""The installed app's entry point (PyInstaller's script): ``packaging/kvant_frozen.py`` does the work.

Runs unfrozen too, from the repository: ``python packaging/kvant_app.py --self-test``.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

if __name__ == "__main__":
    multiprocessing.freeze_support()
    if not getattr(sys, "frozen", False):  # from a checkout: the repository and this folder
        here = Path(__file__).resolve().parent
        sys.path[:0] = [str(here.parent), str(here)]
    import kvant_frozen

    sys.exit(kvant_frozen.main())
