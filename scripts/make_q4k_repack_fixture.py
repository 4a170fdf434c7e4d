"""Generate the llama.cpp oracle fixture of its repacked Q4_K mat-mul (kernels/Q4_K_repack.npz).

llama.cpp's CPU backend runs Q4_K weights of a multiple of 8 rows through its "repack" buffer, not
through ``ggml_vec_dot_q4_K_q8_K``: ``ggml_gemm_q4_K_8x8_q8_K`` for the first ``n - n % 4``
activation columns and ``ggml_gemv_q4_K_8x8_q8_K`` for the others (see
``engine.runtime.kernels.simd``, "Q4_K × Q8_K, repack").  This records what it computes inside the
default model (``llama-cpp-python``, through ``scripts/debug_llama_ops.py``'s ``llama_dump``): for a
few layers' Q4_K matrices, llama.cpp's input activations (all columns) and its output for the
first :data:`ROWS` weight rows, with those rows' GGUF bytes.  Weight rows are independent in the
repacked layout (8-row groups), so a row slice gives the same numbers as the whole matrix.

Stored per case ``<c>`` (``c0``, ``c1``, ...): ``<c>_raw`` (ROWS × row bytes uint8), ``<c>_x`` (n × K
f32), ``<c>_out`` (n × ROWS f32).  Column counts are chosen so that both the gemm and the gemv run.

Run:  python scripts/make_q4k_repack_fixture.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

OUT = ROOT / "tests" / "fixtures" / "kernels" / "Q4_K_repack.npz"
ROWS = 8  # one 8-row group of the repacked layout
# (token count, GGUF tensor, llama.cpp's input tensor name, output name or None for "the node after")
CASES = (
    (9, "blk.0.attn_output.weight", "kqv_out-0", None),  # 8 gemm columns + 1 gemv
    (5, "blk.2.ffn_down.weight", "ffn_geglu-2", "ffn_out-2"),  # 4 gemm + 1 gemv
    (1, "blk.5.attn_output.weight", "kqv_out-5", None),  # one token: gemv only
)
IDS = [2, 105, 2364, 107, 6974, 496, 180422, 1003, 506, 5442, 236761, 106, 107]


def main() -> None:
    from debug_llama_ops import DEFAULT_MODEL, llama_dump

    from engine.gguf import open_gguf

    model = open_gguf(DEFAULT_MODEL)
    data: dict[str, np.ndarray] = {}
    for c, (n, tensor, src, dst) in enumerate(CASES):
        t = model.tensor(tensor)
        assert int(t.type) == 12, f"{tensor} is not Q4_K"
        rows, cols = (int(d) for d in t.shape)
        raw = np.asarray(model.raw(tensor), np.uint8).reshape(rows, -1)
        dumps, _ = llama_dump(DEFAULT_MODEL, IDS[:n])
        names = [r["name"] for r in dumps]
        x = dumps[names.index(src)]["data"].reshape(n, cols)
        y = (dumps[names.index(src) + 1] if dst is None else dumps[names.index(dst)])["data"].reshape(n, rows)
        data[f"c{c}_raw"] = raw[:ROWS].copy()
        data[f"c{c}_x"] = np.ascontiguousarray(x, np.float32)
        data[f"c{c}_out"] = np.ascontiguousarray(y[:, :ROWS], np.float32)
        print(f"case {c}: {tensor} {rows}x{cols}, {n} columns")
    np.savez_compressed(OUT, **data)
    print(f"{OUT} {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
