"""Numba's kernel cache is keyed by the kernels' sources (engine._jit): a change to any kernel
file, not only to the file defining a kernel, must not run stale machine code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine import _jit

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_hash_follows_every_kernel_source(tmp_path):
    _tree(tmp_path, {"quant/a.py": "A = 1\n", "runtime/kernels/simd.py": "B = 2\n", "gui.py": "C = 3\n"})
    dirs = ("quant", "runtime/kernels")
    h0 = _jit.sources_hash(tmp_path, dirs)
    assert _jit.sources_hash(tmp_path, dirs) == h0  # stable
    (tmp_path / "gui.py").write_text("C = 4\n")  # not a kernel source
    assert _jit.sources_hash(tmp_path, dirs) == h0
    (tmp_path / "runtime/kernels/simd.py").write_text("B = 3\n")  # a helper other kernels inline
    h1 = _jit.sources_hash(tmp_path, dirs)
    assert h1 != h0
    (tmp_path / "quant/new.py").write_text("")  # a new file
    assert _jit.sources_hash(tmp_path, dirs) not in (h0, h1)


def test_cache_dir_replaces_earlier_caches_and_falls_back(tmp_path):
    pkg, user = tmp_path / "pkg", tmp_path / "user"
    old = _jit.cache_dir("old", (pkg, user))
    (old / "k.nbi").write_text("x")
    new = _jit.cache_dir("new", (pkg, user))
    assert new == pkg / "numba-new" and new.is_dir() and not old.exists()
    pkg.chmod(0o500)  # a read-only install: the user cache
    try:
        if os.access(pkg, os.W_OK):  # root ignores permissions
            return
        assert _jit.cache_dir("new", (pkg, user)) == user / "numba-new"
    finally:
        pkg.chmod(0o700)


def test_engine_kernels_use_the_keyed_cache():
    """In a fresh process: the keyed directory, kept when Numba re-reads its configuration after a
    NUMBA_* variable changes (the compiler does that before every compilation)."""
    code = (
        "import os, engine.runtime.kernels, numba\n"
        "print(numba.config.CACHE_DIR)\n"
        "os.environ['NUMBA_OPT'] = '3'; numba.core.config.reload_config()\n"
        "print(numba.config.CACHE_DIR)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first, after_reload = out.stdout.split()
    assert Path(first).name == f"numba-{_jit.sources_hash()}"
    assert after_reload == first


def test_numba_cache_dir_from_the_environment_wins(tmp_path):
    code = "import engine.runtime.kernels, numba; print(numba.config.CACHE_DIR)"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path)
