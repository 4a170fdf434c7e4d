"""Compile every CUDA kernel the GPU tests launch to PTX with the real numba-cuda compiler (no GPU needed).

The tests run the CUDA kernels on Numba's simulator, which executes them as Python and so never checks that
numba-cuda can type and lower them for a real device.  This script closes that gap without a GPU:

1. runs the CUDA tests (``tests/test_cuda_*.py``) on the simulator with a pytest plugin that records every
   kernel launch and its argument types (the shapes the Gemma 3 and llama-family offload paths really use);
2. compiles each distinct (kernel, signature) with ``numba.cuda.compile_ptx`` for the chosen compute
   capabilities, as a GPU run would at its first launch, and reports failures, register-spilling local memory
   and float64 instructions per kernel.

Needs numba-cuda with NVIDIA's NVVM from pip (``pip install 'kvant[cuda]'``); no driver, no device.

    python scripts/check_cuda_ptx.py [--cc 8.0 9.0] [-k PYTEST_EXPR]
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = (
    "engine.runtime.cuda.kernels",
    "engine.runtime.cuda.qkernels",
    "engine.runtime.cuda.ops_kernels",
    "engine.runtime.cuda.fused_kernels",
)
RECORD_ENV = "KVANT_CUDA_LAUNCH_RECORD"


# ------------------------------------------------------------------------------------ step 1: record


def _arg_type(a):
    import numpy as np
    from numba import from_dtype, typeof, types

    arr = getattr(a, "_ary", a)  # the simulator's device arrays wrap a NumPy array
    if isinstance(arr, np.ndarray):
        layout = "C" if arr.flags.c_contiguous else ("F" if arr.flags.f_contiguous else "A")
        return types.Array(from_dtype(arr.dtype), arr.ndim, layout)
    return typeof(a)


class _Recorder:
    def __init__(self, kernel, module: str, name: str, seen: set) -> None:
        self._kernel, self._module, self._name, self._seen = kernel, module, name, seen

    def __getitem__(self, config):
        launch = self._kernel[config]

        def run(*args):
            self._seen.add((self._module, self._name, tuple(_arg_type(a) for a in args)))
            return launch(*args)

        return run

    def __getattr__(self, attr):
        return getattr(self._kernel, attr)


class RecordPlugin:
    """pytest plugin (loaded by step 1): wraps the kernels of KERNEL_MODULES, pickles what was launched."""

    def __init__(self) -> None:
        self.seen: set = set()

    def pytest_sessionstart(self, session) -> None:
        for modname in KERNEL_MODULES:
            try:
                mod = importlib.import_module(modname)
            except ImportError:
                continue
            for name, obj in list(vars(mod).items()):
                kernel = hasattr(obj, "py_func") and hasattr(obj, "__getitem__")
                if kernel and not getattr(obj, "_device", False):  # device functions are called, not launched
                    setattr(mod, name, _Recorder(obj, modname, name, self.seen))

    def pytest_sessionfinish(self, session) -> None:
        with open(os.environ[RECORD_ENV], "wb") as fh:
            pickle.dump(sorted(self.seen, key=repr), fh)


def pytest_configure(config) -> None:  # this file as a plugin: ``-p check_cuda_ptx``
    if os.environ.get(RECORD_ENV):
        config.pluginmanager.register(RecordPlugin(), "kvant-cuda-launch-recorder")


def record(pytest_args: list[str]) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "launches.pkl"
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", **{RECORD_ENV: str(out)})
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "check_cuda_ptx", *pytest_args]
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        if rc != 0 or not out.exists():
            sys.exit(f"the simulator tests failed (exit {rc}); nothing to compile")
        with open(out, "rb") as fh:
            return pickle.load(fh)


# ------------------------------------------------------------------------------------ step 2: compile


def compile_all(launches: list, ccs: list[tuple[int, int]]) -> int:
    from numba import cuda

    try:  # compile_ptx with an explicit cc needs no device; some numba-cuda versions still ask for one
        import types as pytypes

        import numba.cuda.dispatcher as disp

        disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=ccs[0])
    except ImportError:
        pass
    bad = 0
    for modname, name, sig in launches:
        kernel = getattr(importlib.import_module(modname), name)
        for cc in ccs:
            label = f"{modname.rsplit('.', 1)[1]}.{name} sm_{cc[0]}{cc[1]} ({', '.join(map(str, sig))})"
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            except Exception as err:  # every failure is reported, then the script fails
                bad += 1
                print(f"FAIL {label}\n     {type(err).__name__}: {str(err)[:800]}")
                continue
            local = ptx.count(".local")
            f64 = sum(ptx.count(op) for op in ("mul.f64", "add.f64", "fma.rn.f64", "div.rn.f64"))
            print(f"ok   {label[:150]}  ptx {len(ptx) // 1024} KiB, local {local}, f64 ops {f64}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cc", nargs="+", default=["8.0", "9.0"], help="compute capabilities (default 8.0 9.0)")
    ap.add_argument("-k", default=None, help="pytest -k expression to run fewer tests")
    a = ap.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("run without NUMBA_ENABLE_CUDASIM: step 2 needs the real compiler")
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cuda_*.py"))
    launches = record([*tests, *(["-k", a.k] if a.k else [])])
    kernels = {(m, n) for m, n, _ in launches}
    print(f"{len(launches)} (kernel, signature) pairs from {len(kernels)} kernels launched by the tests")
    ccs = [tuple(int(v) for v in c.split(".")) for c in a.cc]
    bad = compile_all(launches, ccs)
    print(f"{len(launches) * len(ccs) - bad} compiled, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
