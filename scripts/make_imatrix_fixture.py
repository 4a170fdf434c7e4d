"""Generate llama.cpp's importance-matrix sums for the default model (tests/fixtures/imatrix/).

Runs llama.cpp (through ``llama-cpp-python``, never a dependency of Kvant or of its tests) with an eval
callback (``cb_eval``) that replicates ``IMatrixCollector::collect_imatrix`` of ``llama-imatrix``
(tools/imatrix/imatrix.cpp) for dense mat-muls:

- it is interested (``ask``) in ``GGML_OP_MUL_MAT`` nodes whose ``src1`` is F32 with at least 16 rows
  (``src1->ne[1] >= 16``) and whose weight ``src0`` is named ``blk.*`` (or ``output.weight`` with
  ``--process-output``);
- for each such node it adds ``x[j]*x[j]`` of every row ``x`` of ``src1`` to the weight's ``values``
  (float32, row after row, as the C++ loop does) and ``ggml_nrows(src1) / n_mat`` to its count.

The calibration tokens are the first ``N_CHUNKS * N_CTX`` tokens of Kvant's calibration text
(tokenized with BOS, no special-token parsing), evaluated as ``llama-imatrix`` does: chunk by chunk
from an empty KV cache, the first token of each chunk replaced by BOS, logits for every position.

It stores, in ``llama_imatrix_ctx{N_CTX}.npz``: ``tokens`` (int32), ``n_ctx``, ``n_chunks``,
``names`` (every weight llama-imatrix collects by default), ``names_process_output`` (with
``--process-output``), ``mm_weights`` (every weight seen in a MUL_MAT at all) and, for every collected
weight ``W``, ``W.in_sum2`` (float32, n_per_row) and ``W.counts`` (float32, 1); plus ``summary.json``.

Run:  python scripts/make_imatrix_fixture.py [MODEL.gguf]
(default: ~/.local/share/kvant/models/gemma-3-270m-q4_k_m.gguf; seconds on 2 cores)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = ROOT / "resources" / "calibration" / "devils-dictionary-d-h.txt"
OUT_DIR = ROOT / "tests" / "fixtures" / "imatrix"
DEFAULT_MODEL = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"
N_CTX = 128
N_CHUNKS = 2
MIN_ROWS = 16  # imatrix.cpp: "if (src1->ne[1] < 16 ...) return false"

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml that llama-cpp-python ships (include/ggml.h)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def filter_tensor_name(name: str) -> str:
    """imatrix.cpp's ``filter_tensor_name``: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    if "#" in name:
        return name.split("#")[1]
    return name


class Collector:
    """``IMatrixCollector::collect_imatrix`` for dense mat-muls (MUL_MAT_ID does not occur in Gemma 3)."""

    def __init__(self, ggml: ctypes.CDLL) -> None:
        self.g = ggml
        self.values: dict[str, np.ndarray] = {}  # float32, like Stats::values
        self.counts: dict[str, int] = {}
        self.mm_weights: set[str] = set()
        self.names_output: set[str] = set()  # what --process-output would add
        self.skipped_small: int = 0

    def op_name(self, t: GgmlTensor) -> str:
        return self.g.ggml_op_name(t.op).decode()

    def __call__(self, tp: int, ask: bool, _ud) -> bool:
        t = ctypes.cast(tp, ctypes.POINTER(GgmlTensor)).contents
        op = self.op_name(t)
        if op == "MUL_MAT_ID":
            raise SystemExit("MUL_MAT_ID in the graph: this script handles dense models only")
        if op != "MUL_MAT":
            return not ask  # ask: not interested; otherwise continue
        src0, src1 = t.src[0].contents, t.src[1].contents
        wname = filter_tensor_name(src0.name.decode())
        if wname.endswith(".weight"):
            self.mm_weights.add(wname)
        if ask:
            if src1.ne[1] < MIN_ROWS or src1.type != GGML_TYPE_F32:
                self.skipped_small += wname.startswith("blk.")
                return False
            if wname == "output.weight":
                self.names_output.add(wname)
            return wname.startswith("blk.")
        n_mat = src0.ne[2] * src0.ne[3]
        if n_mat != 1:
            raise SystemExit(f"{wname}: {n_mat} matrices; this script handles 2-D weights only")
        assert src1.nb[0] == 4
        nbytes = self.g.ggml_nbytes(ctypes.addressof(src1))
        buf = (ctypes.c_char * nbytes)()
        self.g.ggml_backend_tensor_get(ctypes.addressof(src1), buf, 0, nbytes)
        raw = np.frombuffer(buf, np.uint8)
        ne, nb = list(src1.ne), list(src1.nb)
        acc = self.values.setdefault(wname, np.zeros(ne[0], np.float32))
        for i3 in range(ne[3]):
            for i2 in range(ne[2]):
                for row in range(ne[1]):
                    off = row * nb[1] + i2 * nb[2] + i3 * nb[3]
                    x = raw[off : off + 4 * ne[0]].view(np.float32)
                    acc += x * x  # e.values[mat_start + j] += x[j] * x[j], in float
        self.counts[wname] = self.counts.get(wname, 0) + ne[1] * ne[2] * ne[3]  # ggml_nrows / n_mat
        return True


def main(argv: list[str]) -> int:
    import llama_cpp
    from llama_cpp import _internals

    from engine.bench.llamacpp import load_ggml

    model_path = Path(argv[0]) if argv else DEFAULT_MODEL
    text = TEXT.read_text(encoding="utf-8")
    g = load_ggml()
    g.ggml_op_name.restype = ctypes.c_char_p
    g.ggml_op_name.argtypes = [ctypes.c_int]
    g.ggml_nbytes.restype = ctypes.c_size_t
    g.ggml_nbytes.argtypes = [ctypes.c_void_p]
    g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    assert ctypes.sizeof(GgmlTensor) == 336, ctypes.sizeof(GgmlTensor)  # ggml.h static_assert-like check

    col = Collector(g)
    cbf = llama_cpp.ggml_backend_sched_eval_callback(col)
    llm = llama_cpp.Llama(
        str(model_path), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, n_threads=2, verbose=False
    )
    llm.context_params.cb_eval = cbf
    llm._ctx = _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos = llm.token_bos()
    add_bos = tokens[0] == bos
    tokens = tokens[: N_CHUNKS * N_CTX]
    for i in range(N_CHUNKS):
        ids = list(tokens[i * N_CTX : (i + 1) * N_CTX])
        if add_bos:
            ids[0] = bos
        llm.reset()
        llm.eval(ids)
        print(f"chunk {i + 1}/{N_CHUNKS}: {len(col.values)} weights collected", flush=True)

    names = sorted(col.values)
    arrays: dict[str, np.ndarray] = {
        "tokens": np.asarray(tokens, np.int32),
        "n_ctx": np.int64(N_CTX),
        "n_chunks": np.int64(N_CHUNKS),
        "names": np.array(names),
        "names_process_output": np.array(sorted(set(names) | col.names_output)),
        "mm_weights": np.array(sorted(col.mm_weights)),
        "text_sha256": np.array(hashlib.sha256(text.encode("utf-8")).hexdigest()),
    }
    for n in names:
        arrays[n + ".in_sum2"] = col.values[n]
        arrays[n + ".counts"] = np.array([col.counts[n]], np.float32)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"llama_imatrix_ctx{N_CTX}.npz"
    np.savez_compressed(out, **arrays)
    summary = {
        "model": model_path.name,
        "text": f"resources/calibration/{TEXT.name}",
        "llama_cpp": llama_cpp.__version__,
        "n_ctx": N_CTX,
        "n_chunks": N_CHUNKS,
        "n_weights_collected": len(names),
        "mat_mul_weights_not_collected": sorted(col.mm_weights - set(names)),
        "counts": sorted({int(c) for c in col.counts.values()}),
    }
    (OUT_DIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB): {len(names)} weights", flush=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
