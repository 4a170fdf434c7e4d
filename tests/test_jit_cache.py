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


def test_on_compile_fires_once_for_a_compile_on_this_thread():
    """engine.on_compile: called once when a kernel missing from the cache compiles on the calling
    thread; not for a kernel already compiled, nor for another thread's compile; a failing callback
    does not break the compile."""
    import threading

    import numba

    import engine

    def make():
        @numba.njit(cache=False)
        def f(x):
            return x + 1

        return f

    calls: list[int] = []
    f = make()
    with engine.on_compile(lambda: calls.append(1)):
        assert f(1) == 2 and f(2.5) == 3.5  # two compiles, one call
    assert calls == [1]
    with engine.on_compile(lambda: calls.append(2)):
        f(3)  # compiled already
        g = make()
        t = threading.Thread(target=g, args=(1,))
        t.start()
        t.join()
    assert calls == [1]
    with engine.on_compile(lambda: 1 / 0):
        assert make()(1) == 2


def test_a_load_that_compiles_says_so(default_model, monkeypatch):
    """open_model's progress says when the load compiles kernels (a first run), and only then."""
    import numba

    import engine
    import engine.models
    from engine.runtime.model import FIRST_COMPILE

    load = engine.models.load_model

    def compiling_load(*args, **kwargs):
        numba.njit(cache=False)(lambda x: x - 1)(1)
        return load(*args, **kwargs)

    for patched, expected in ((False, False), (True, True)):
        if patched:
            monkeypatch.setattr(engine.models, "load_model", compiling_load)
        seen: list[str] = []
        with engine.open_model(default_model, n_ctx=64, progress=lambda e, seen=seen: seen.append(e.message)):
            pass
        assert (FIRST_COMPILE in seen) is expected, seen
