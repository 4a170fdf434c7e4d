"""Generate the llama.cpp oracle fixture of its Q6_K mat-mul (tests/fixtures/kernels/Q6_K_tiled.npz).

llama.cpp's CPU backend (this build, x86) does not repack Q6_K weights: a mat-mul of 8 or more
activation columns runs through its "tiled" kernel (``ggml_compute_forward_mul_mat_tiled``, one
f32 fused multiply-add per 256-element block, see ``engine.runtime.kernels.simd``, "Q6_K × Q8_K,
tiled"), fewer columns through ``ggml_vec_dot_q6_K_q8_K``.  This records both sides of that
threshold from the default model's Q6_K ``ffn_down`` matrices (``llama-cpp-python``, through
``scripts/debug_llama_ops.py``'s ``llama_dump``): llama.cpp's input activations (all columns) and
its output for the first :data:`ROWS` weight rows, with those rows' GGUF bytes.  Weight rows are
independent on both paths, so a row slice gives the same numbers as the whole matrix.

Stored per case ``<c>`` (``c0``, ``c1``): ``<c>_raw`` (ROWS × row bytes uint8), ``<c>_x`` (n × K
f32), ``<c>_out`` (n × ROWS f32).

Run:  python scripts/make_q6k_repack_fixture.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

OUT = ROOT / "tests" / "fixtures" / "kernels" / "Q6_K_tiled.npz"
ROWS = 3  # a row pair and a single row of the kernels
# (token count, layer): 8 columns, the fewest llama.cpp runs tiled; 7, the most it runs per vec_dot
CASES = ((8, 0), (7, 16))
IDS = [2, 105, 2364, 107, 6974, 496, 180422, 1003, 506, 5442, 236761, 106, 107]


def main() -> None:
    from debug_llama_ops import DEFAULT_MODEL, llama_dump

    from engine.gguf import open_gguf

    model = open_gguf(DEFAULT_MODEL)
    data: dict[str, np.ndarray] = {}
    for c, (n, layer) in enumerate(CASES):
        tensor = f"blk.{layer}.ffn_down.weight"
        t = model.tensor(tensor)
        assert int(t.type) == 14, f"{tensor} is not Q6_K"
        rows, cols = (int(d) for d in t.shape)
        raw = np.asarray(model.raw(tensor), np.uint8).reshape(rows, -1)
        dumps, _ = llama_dump(DEFAULT_MODEL, IDS[:n])
        names = [r["name"] for r in dumps]
        x = dumps[names.index(f"ffn_geglu-{layer}")]["data"].reshape(n, cols)
        y = dumps[names.index(f"ffn_out-{layer}")]["data"].reshape(n, rows)
        data[f"c{c}_raw"] = raw[:ROWS].copy()
        data[f"c{c}_x"] = np.ascontiguousarray(x, np.float32)
        data[f"c{c}_out"] = np.ascontiguousarray(y[:, :ROWS], np.float32)
        print(f"case {c}: {tensor} {rows}x{cols}, {n} columns")
    np.savez_compressed(OUT, **data)
    print(f"{OUT} {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
