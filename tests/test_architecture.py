"""Rules of the code's shape: engine/ never imports Qt; gui/ uses only the engine's public API."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "PySide2", "shiboken6", "qtpy", "superqt")
# engine modules the GUI may import from (packages' __init__ re-exports, plus these plain modules)
PUBLIC_MODULES = {"engine", "engine.errors", "engine.progress", "engine.paths"}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def test_engine_sources_never_import_qt():
    offenders = [
        f"{p.relative_to(ROOT)}:{line} imports {mod}"
        for p in (ROOT / "engine").rglob("*.py")
        for mod, _, line in _imports(p)
        if mod.split(".")[0] in QT_MODULES
    ]
    assert offenders == []


def test_importing_the_whole_engine_loads_no_qt():
    code = (
        "import importlib, pkgutil, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {QT_MODULES!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def _public_packages() -> set[str]:
    return {m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if m.ispkg} | PUBLIC_MODULES


def test_gui_uses_only_the_engines_public_api():
    public = _public_packages()
    offenders = []
    for p in (ROOT / "gui").rglob("*.py"):
        for mod, names, line in _imports(p):
            if mod.split(".")[0] != "engine":
                continue
            where = f"{p.relative_to(ROOT)}:{line}"
            if mod not in public:
                offenders.append(f"{where} imports internal module {mod}")
                continue
            exported = getattr(importlib.import_module(mod), "__all__", None)
            for name in names:
                if name.startswith("_") and not name.endswith("__"):
                    offenders.append(f"{where} imports private name {mod}.{name}")
                elif exported is not None and name not in exported and mod not in PUBLIC_MODULES:
                    offenders.append(f"{where} imports {mod}.{name}, which is not in its __all__")
    assert offenders == []


def test_cli_does_not_load_qt():
    code = (
        "import sys, main\n"
        "assert main.main(['models', '--json']) == 0\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {QT_MODULES!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120, capture_output=True)


def test_version_flag():
    out = subprocess.run(
        [sys.executable, "main.py", "--version"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == f"Kvant {engine.__version__}"
