"""Generate the llama.cpp oracle fixtures for ``engine.quant`` (tests/fixtures/quant/*.npz).

For every quantizable GGML type this calls llama.cpp's own ``ggml_quantize_chunk`` (from the
``libggml-base.so`` shipped inside the ``llama-cpp-python`` wheel) through ctypes on small,
deterministic inputs and stores llama.cpp's output bytes.  Inputs are *not* stored: they are
regenerated from a recorded seed and generator spec by :func:`make_input` / :func:`make_imatrix`
(NumPy PCG64), and a SHA-256 of each regenerated input is stored so a test notices if NumPy's
generators ever change.

Run:  python scripts/make_quant_fixtures.py            (all types)
      python scripts/make_quant_fixtures.py Q4_0 IQ4_NL (some types)

This module must import without llama-cpp-python (the tests import the generators from it).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.bench.llamacpp import load_ggml

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quant"
FIXTURE_FORMAT = 1
BASE_SEED = 20240611

ROWS = 8
N_PER_ROW = 512

# ggml type ids (ggml.h) of every type ggml_quantize_chunk accepts that we fixture.
GGML_IDS: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
    "Q2_K": 10,
    "Q3_K": 11,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
    "IQ2_XXS": 16,
    "IQ2_XS": 17,
    "IQ3_XXS": 18,
    "IQ1_S": 19,
    "IQ4_NL": 20,
    "IQ3_S": 21,
    "IQ2_S": 22,
    "IQ4_XS": 23,
    "IQ1_M": 29,
    "BF16": 30,
    "TQ1_0": 34,
    "TQ2_0": 35,
    "MXFP4": 39,
}

# Types whose result llama.cpp changes when given an importance matrix.
USES_IMATRIX = {
    "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
    "IQ4_NL", "IQ4_XS",
}  # fmt: skip
# Types llama.cpp refuses to quantize without one (ggml_quantize_requires_imatrix).
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S"}

# name -> (description, extra parameters); the generator is make_input().
CASES: dict[str, str] = {
    "normal": "standard normal",
    "student_t": "Student-t, 3 degrees of freedom (heavy tails)",
    "laplace": "Laplace, scale 1",
    "outliers": "normal with one x50 outlier per 32-element block",
    "sparse": "90% exact zeros, the rest normal",
    "zeros": "all-zero rows",
    "constant": "each row one constant value (positive, negative, small, large)",
    "halves": "multiples of 0.5 in [-8, 8] (exact .5 ties after scaling)",
    "halves127": "multiples of 0.5 in [-127, 127], +-127 present in every block",
    "tiny": "normal x 1e-30",
    "large": "normal x 1e4 (fp16 scales stay finite)",
    "huge": "normal x 1e30 (fp16 scales overflow: whatever llama.cpp does is recorded)",
}
CONSTANTS = (0.5, -3.0, 1e-3, 7.25, -1e-6, 100.0, -0.1, 2.0**-10)


def case_seed(case: str) -> int:
    return BASE_SEED + list(CASES).index(case)


def make_input(case: str, rows: int = ROWS, n_per_row: int = N_PER_ROW) -> np.ndarray:
    """The deterministic float32 input of one fixture case (C-contiguous, rows x n_per_row)."""
    rng = np.random.Generator(np.random.PCG64(case_seed(case)))
    shape = (rows, n_per_row)
    if case == "normal":
        x = rng.standard_normal(shape)
    elif case == "student_t":
        x = rng.standard_t(3.0, shape)
    elif case == "laplace":
        x = rng.laplace(0.0, 1.0, shape)
    elif case == "outliers":
        x = rng.standard_normal(shape)
        blocks = x.reshape(rows, -1, 32)
        pos = rng.integers(0, 32, blocks.shape[:2])
        np.put_along_axis(blocks, pos[..., None], blocks.take(0, axis=2)[..., None] * 50.0, axis=2)
    elif case == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.1)
    elif case == "zeros":
        x = np.zeros(shape)
    elif case == "constant":
        x = np.repeat(np.array([CONSTANTS[i % len(CONSTANTS)] for i in range(rows)])[:, None], n_per_row, 1)
    elif case == "halves":
        x = rng.integers(-16, 17, shape) * 0.5
    elif case == "halves127":
        x = rng.integers(-254, 255, shape) * 0.5
        blocks = x.reshape(rows, -1, 32)
        pos = rng.integers(0, 32, blocks.shape[:2])
        sign = np.where(rng.random(blocks.shape[:2]) < 0.5, -127.0, 127.0)
        np.put_along_axis(blocks, pos[..., None], sign[..., None], axis=2)
    elif case == "tiny":
        x = rng.standard_normal(shape) * 1e-30
    elif case == "large":
        x = rng.standard_normal(shape) * 1e4
    elif case == "huge":
        x = rng.standard_normal(shape) * 1e30
    else:
        raise KeyError(case)
    return np.ascontiguousarray(x, dtype=np.float32)


def make_imatrix(case: str, n_per_row: int = N_PER_ROW) -> np.ndarray:
    """A random positive importance matrix (one float per column) for one case."""
    rng = np.random.Generator(np.random.PCG64(case_seed(case) + 1000))
    return (rng.gamma(1.5, 1.0, n_per_row) + 1e-3).astype(np.float32)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def fixture_path(qtype: str) -> Path:
    return FIXTURE_DIR / f"{qtype}.npz"


def load_fixture(qtype: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {"<case>" or "<case>+imatrix": output bytes}) of one type's fixture."""
    with np.load(fixture_path(qtype), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        outputs = {k: z[k] for k in z.files if k != "meta"}
    return meta, outputs


# ----------------------------------------------------------------------------- llama.cpp side


def llama_version() -> dict[str, str]:
    import llama_cpp

    lib = load_ggml()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "ggml_version": lib.ggml_version().decode(),
        "ggml_commit": lib.ggml_commit().decode(),
    }


def ggml_quantize(lib, qtype: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """llama.cpp's bytes for ``x`` (rows x n_per_row float32) as uint8 (rows, row_size)."""
    tid = GGML_IDS[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    row_size = lib.ggml_row_size(tid, n)
    out = np.zeros((rows, row_size), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(
        tid, x.ctypes.data, out.ctypes.data, 0, rows, n, None if im is None else im.ctypes.data
    )
    if written != rows * row_size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {rows * row_size}")
    return out


def _child(qtype: str, case: str, with_imatrix: bool, conn) -> None:
    os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort is expected for some cases: no gdb dump
    lib = load_ggml()
    x = make_input(case)
    im = make_imatrix(case) if with_imatrix else None
    conn.send_bytes(ggml_quantize(lib, qtype, x, im).tobytes())
    conn.close()


def _run_isolated(qtype: str, case: str, with_imatrix: bool) -> bytes | None:
    """Run one quantization in a forked child so a GGML_ASSERT abort is recorded, not fatal."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(qtype, case, with_imatrix, send))
    p.start()
    send.close()
    try:
        data = recv.recv_bytes()
    except EOFError:
        data = None
    p.join()
    return data if p.exitcode == 0 else None


def generate(qtype: str) -> Path:
    lib = load_ggml()
    tid = GGML_IDS[qtype]
    row_size = int(lib.ggml_row_size(tid, N_PER_ROW))
    variants = []
    if qtype not in NEEDS_IMATRIX:
        variants.append(False)
    if qtype in USES_IMATRIX:
        variants.append(True)
    outputs: dict[str, np.ndarray] = {}
    cases_meta = {}
    for case in CASES:
        x = make_input(case)
        entry = {"seed": case_seed(case), "input_sha256": digest(x), "aborted": []}
        if True in variants:
            entry["imatrix_sha256"] = digest(make_imatrix(case))
        for with_im in variants:
            key = case + ("+imatrix" if with_im else "")
            data = _run_isolated(qtype, case, with_im)
            if data is None:
                entry["aborted"].append(key)  # llama.cpp aborted (GGML_ASSERT): recorded, no bytes
                continue
            outputs[key] = np.frombuffer(data, dtype=np.uint8).reshape(ROWS, row_size)
        cases_meta[case] = entry
    meta = {
        "format": FIXTURE_FORMAT,
        "type": qtype,
        "ggml_id": tid,
        "rows": ROWS,
        "n_per_row": N_PER_ROW,
        "row_size": row_size,
        "requires_imatrix": bool(lib.ggml_quantize_requires_imatrix(tid)),
        "variants": ["imatrix" if v else "plain" for v in variants],
        "generator": "numpy.random.Generator(PCG64(seed)); see scripts/make_quant_fixtures.py make_input",
        "imatrix_generator": "gamma(1.5, 1.0, n_per_row) + 1e-3 from PCG64(seed + 1000)",
        "cases": cases_meta,
        "case_descriptions": CASES,
        "llama_cpp": llama_version(),
    }
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    path = fixture_path(qtype)
    np.savez_compressed(path, meta=np.array(json.dumps(meta, sort_keys=True)), **outputs)
    return path


def main(argv: list[str]) -> int:
    types = argv or list(GGML_IDS)
    unknown = [t for t in types if t not in GGML_IDS]
    if unknown:
        print(f"unknown type(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    for t in types:
        path = generate(t)
        _, outs = load_fixture(t)
        print(f"{t:8s} {len(outs):3d} outputs  {os.path.getsize(path):8d} bytes  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
