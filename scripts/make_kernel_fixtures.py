"""Generate llama.cpp oracle fixtures for the CPU mat-vec kernels (tests/fixtures/kernels/*.npz).

For every weight type of :data:`engine.runtime.kernels.QTYPES` this quantizes random weights with
llama.cpp's own ``ggml_quantize_chunk`` (libggml-base of llama-cpp-python, through ctypes), converts
random activations with the CPU backend's ``from_float`` of the type's ``vec_dot_type`` (what
llama.cpp's ``mul_mat`` does before its dot products), and records the CPU backend's ``vec_dot``
result for every (activation row, weight row) pair: both the dispatched one of
``ggml_get_type_traits_cpu`` (the SIMD path of this machine) and, where the library exports it, the
portable ``ggml_vec_dot_*_generic``.

Stored per type (``<TYPE>.npz``): ``raw`` (weight bytes, rows × row bytes), ``x`` (f32 activations,
n × K), ``act`` (llama.cpp's quantized activation bytes, n × row bytes), ``dot`` (n × rows f32, the
dispatched vec_dot), ``dot_generic`` (same from the generic C code; absent if not exported or if it
disagrees with the dispatched kernel, see :func:`make`).

Run:  python scripts/make_kernel_fixtures.py [TYPE ...]

The oracle helpers (:class:`LlamaCpu`) are also used by ``benchmarks/bench_matvec.py``.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURE_DIR = ROOT / "tests" / "fixtures" / "kernels"
SEED = 20250301
ROWS = 16
COLS = 512
N_ACT = 2

# ggml ids of the activation (vec_dot) types
VEC_DOT_NAMES = {0: "f32", 1: "f16", 8: "q8_0", 9: "q8_1", 15: "q8_K", 30: "bf16"}
# types llama.cpp refuses to quantize without an importance matrix
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S"}


class _Traits(ctypes.Structure):
    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_VEC_DOT = ctypes.CFUNCTYPE(
    None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
)  # fmt: skip


class LlamaCpu:
    """llama.cpp's CPU backend through ctypes: quantize, from_float, vec_dot per GGML type."""

    def __init__(self) -> None:
        import llama_cpp

        from engine.bench.llamacpp import load_ggml

        self.base = load_ggml()
        lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
        for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
            if (lib_dir / name).exists():
                self.cpu = ctypes.CDLL(str(lib_dir / name))
                break
        else:
            raise OSError(f"no ggml-cpu library in {lib_dir}")
        self.cpu.ggml_cpu_init.restype = None
        self.cpu.ggml_cpu_init()
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_Traits)
        self.cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]

    def traits(self, tid: int) -> tuple[object, object, int]:
        t = self.cpu.ggml_get_type_traits_cpu(tid).contents
        ff = _FROM_FLOAT(t.from_float) if t.from_float else None
        vd = _VEC_DOT(t.vec_dot) if t.vec_dot else None
        return ff, vd, int(t.vec_dot_type)

    def generic_dot(self, name: str, vdt: int):
        """The portable ``ggml_vec_dot_<type>_<vec_dot_type>_generic``, or None if not exported."""
        lower = name.lower()
        ggml_name = lower[:-1] + "K" if lower.endswith("_k") else lower  # ggml spells q4_K
        fn = getattr(self.cpu, f"ggml_vec_dot_{ggml_name}_{VEC_DOT_NAMES[vdt]}_generic", None)
        return None if fn is None else _VEC_DOT(ctypes.cast(fn, ctypes.c_void_p).value)

    def row_size(self, tid: int, n: int) -> int:
        return int(self.base.ggml_row_size(tid, n))

    def quantize(self, name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        from engine.bench.llamacpp import quantize

        return quantize(self.base, name, x, imatrix)

    def from_float(self, tid: int, x: np.ndarray) -> np.ndarray:
        """Activations (n, K) -> llama.cpp's vec_dot_type bytes for weights of type ``tid``."""
        vdt = self.traits(tid)[2]
        ff = self.traits(vdt)[0]
        x = np.ascontiguousarray(x, np.float32)
        out = np.zeros((x.shape[0], self.row_size(vdt, x.shape[1])), np.uint8)
        for i in range(x.shape[0]):
            if ff is None:  # no conversion: activations used as they are
                out[i] = x[i].view(np.uint8)
            else:
                ff(x[i].ctypes.data, out[i].ctypes.data, x.shape[1])
        return out

    def dots(self, tid: int, raw: np.ndarray, act: np.ndarray, k: int, fn=None) -> np.ndarray:
        """vec_dot of every activation row with every weight row: (n, rows) f32."""
        fn = self.traits(tid)[1] if fn is None else fn
        out = np.zeros((act.shape[0], raw.shape[0]), np.float32)
        s = ctypes.c_float()
        for t in range(act.shape[0]):
            for r in range(raw.shape[0]):
                fn(k, ctypes.byref(s), 0, raw[r].ctypes.data, 0, act[t].ctypes.data, 0, 1)
                out[t, r] = s.value
        return out


def make_inputs(name: str, rows: int, cols: int, n: int, seed: int):
    """Deterministic weights (rows scaled differently, a few outliers) and activations."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.uniform(0.01, 2.0, (rows, 1)).astype(np.float32)
    w[rng.integers(0, rows, 8), rng.integers(0, cols, 8)] *= 6
    x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 20.0, (n, 1))).astype(np.float32)
    x[0, 32:64] = 0.0  # an all-zero activation block
    imatrix = rng.uniform(0.1, 4.0, cols).astype(np.float32) if name in NEEDS_IMATRIX else None
    return w, x, imatrix


def make(name: str, llama: LlamaCpu, tid: int) -> dict[str, np.ndarray]:
    w, x, im = make_inputs(name, ROWS, COLS, N_ACT, SEED + tid)
    raw = llama.quantize(name, w, im)
    act = llama.from_float(tid, x)
    out = {"raw": raw, "x": x, "act": act, "dot": llama.dots(tid, raw, act, COLS)}
    gen = llama.generic_dot(name, llama.traits(tid)[2])
    if gen is not None:
        g = llama.dots(tid, raw, act, COLS, gen)
        # Stored only where it agrees with the dispatched kernel: llama-cpp-python 0.3.36's
        # ggml_vec_dot_q5_0_q8_0_generic is off whenever a block has high bits clear (its own
        # SIMD kernel, which llama.cpp runs on x86, agrees with the other generics' arithmetic).
        if np.allclose(g, out["dot"], rtol=1e-5, atol=1e-5 * np.abs(out["dot"]).max()):
            out["dot_generic"] = g
        else:
            print(f"{name}: generic vec_dot disagrees with the dispatched one; not stored")
    return out


def main(argv: list[str]) -> None:
    from engine.runtime.kernels import QTYPES

    llama = LlamaCpu()
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    ids = {name: tid for tid, (name, _, _) in QTYPES.items()}
    for name in argv or sorted(ids, key=ids.get):
        data = make(name, llama, ids[name])
        path = FIXTURE_DIR / f"{name}.npz"
        np.savez_compressed(path, **data)
        print(f"{name:8s} {path.stat().st_size:7d} bytes  generic={'dot_generic' in data}")


if __name__ == "__main__":
    main(sys.argv[1:])
