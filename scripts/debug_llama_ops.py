"""Dev tool: compare our Gemma 3 graph with llama.cpp's, op by op, from llama.cpp's own intermediates.

Runs llama.cpp (``llama-cpp-python``, never a dependency of Kvant or its tests) on a prompt with an
eval callback (``cb_eval``) that copies every named F32 tensor of the graph ("attn_norm-5",
"Qcur-5", "kq_soft_max-5", "kqv_out-5", "ffn_geglu-5", "l_out-5", ...), then feeds each of our ops
llama.cpp's *input* to that op and reports the relative error of our output against llama.cpp's
output, per op and layer (worst over positions).  An op with a real defect shows errors far above
f32 rounding (~1e-6); f16 rounding flips show up as ~1e-4 in attention.  ``--trace`` also runs our
whole forward pass and prints how the residual stream's error grows layer by layer (chaotic
amplification of rounding differences, through the Q8 activation quantization, looks like that).

Run:  python scripts/debug_llama_ops.py [--trace] [TOKEN_IDS_JSON]
(default: a short Gemma chat prompt; at most 512 tokens, one llama.cpp micro-batch)
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_MODEL = Path.home() / ".local/share/kvant/models/gemma-3-270m-q4_k_m.gguf"
CHAT_IDS = [2, 105, 2364, 107, 6974, 496, 180422, 1003, 506, 5442, 236761, 106, 107, 105, 4368, 107]


def llama_dump(model_path: Path, ids: list[int], decode: list[int] = ()) -> tuple[list[dict], np.ndarray]:
    """Every tensor llama.cpp computes for one batched eval of ``ids`` (F32/F16 contiguous ones with
    their data), in graph order, and the logits.  With ``decode``, those tokens are then evaluated one
    at a time (llama.cpp's decode kernels) and the tensors are the last one's."""
    import llama_cpp
    from llama_cpp import _internals

    g = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    g.ggml_get_name.restype = ctypes.c_char_p
    g.ggml_get_name.argtypes = [ctypes.c_void_p]
    g.ggml_nbytes.restype = ctypes.c_size_t
    g.ggml_nbytes.argtypes = [ctypes.c_void_p]
    g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    g.ggml_is_contiguous.restype = ctypes.c_bool
    g.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    g.ggml_op_desc.restype = ctypes.c_char_p
    g.ggml_op_desc.argtypes = [ctypes.c_void_p]
    dumps: list[dict] = []

    def cb(t, ask, _ud):
        if ask:
            return True
        name = g.ggml_get_name(t).decode()
        if name.startswith("cache_"):
            return True
        typ = ctypes.c_int32.from_address(t).value  # struct ggml_tensor: type, buffer, ne[4], ...
        ne = [ctypes.c_int64.from_address(t + 16 + 8 * i).value for i in range(4)]
        rec = {"name": name, "op": g.ggml_op_desc(t).decode(), "ne": ne}
        if typ in (0, 1) and g.ggml_is_contiguous(t):
            nbytes = g.ggml_nbytes(t)
            buf = (ctypes.c_char * nbytes)()
            g.ggml_backend_tensor_get(t, buf, 0, nbytes)
            a = np.frombuffer(bytes(buf), np.float32 if typ == 0 else np.float16).astype(np.float32)
            rec["data"] = a.reshape(ne[::-1])
        dumps.append(rec)
        return True

    cbf = llama_cpp.ggml_backend_sched_eval_callback(cb)
    llm = llama_cpp.Llama(str(model_path), n_ctx=2048, logits_all=True, n_threads=2, verbose=False)
    llm.context_params.cb_eval = cbf
    llm._ctx = _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    llm.reset()
    llm.eval(ids)
    for tok in decode:
        dumps.clear()
        llm.eval([tok])
    return dumps, np.asarray(llm.scores[: llm.n_tokens], np.float32)


def op_check(dumps: list[dict], model, n: int) -> dict[str, float]:
    from engine.models.gemma3 import _mm
    from engine.runtime.kernels import attention, geglu, rmsnorm, rope_neox

    p = model.params
    eps = np.float32(p.eps)
    pos = np.arange(n, dtype=np.int64)

    def find(name: str, k: int = 0) -> dict:
        return [r for r in dumps if r["name"] == name][k]

    def get(name: str, k: int = 0) -> np.ndarray:
        return find(name, k)["data"].reshape(n, -1)

    def after(name: str) -> np.ndarray:  # the unnamed node right after a named one
        return dumps[dumps.index(find(name)) + 1]["data"].reshape(n, -1)

    def rel(a, b) -> float:
        a = np.asarray(a).reshape(n, -1)
        b = np.asarray(b).reshape(n, -1)
        return float((np.abs(a - b).max(axis=1) / (np.abs(b).max(axis=1) + 1e-30)).max())

    worst: dict[str, float] = {}
    for il, L in enumerate(model.layers):
        x_in = get("inp_scaled") if il == 0 else get(f"l_out-{il - 1}")
        an = get(f"attn_norm-{il}")
        qm, km, vm = get(f"Qcur-{il}"), get(f"Kcur-{il}"), get(f"Vcur-{il}")
        qn = get(f"Qcur_normed-{il}").reshape(n, p.n_head, p.head_dim)
        kn = get(f"Kcur_normed-{il}").reshape(n, p.n_head_kv, p.head_dim)
        qr = get(f"Qcur-{il}", 2).reshape(n, p.n_head, p.head_dim)
        kr = get(f"Kcur-{il}", 2).reshape(n, p.n_head_kv, p.head_dim)
        qs = dumps[dumps.index(find(f"Qcur-{il}", 2)) + 1]["data"].reshape(n, p.n_head, p.head_dim)
        kqv = get(f"kqv_out-{il}")
        wo = after(f"kqv_out-{il}")
        sa, fn = get(f"sa_out-{il}"), get(f"ffn_norm-{il}")
        gate, up, gg = get(f"ffn_gate-{il}"), get(f"ffn_up-{il}"), get(f"ffn_geglu-{il}")
        fo, lo = get(f"ffn_out-{il}"), get(f"l_out-{il}")
        base, fscale = p.rope(il)
        f16 = np.float16
        res = {
            "attn_norm": rel(rmsnorm(x_in, L.attn_norm, eps), an),
            "q_mm": rel(_mm(L.wq, an), qm),
            "k_mm": rel(_mm(L.wk, an), km),
            "v_mm": rel(_mm(L.wv, an), vm),
            "q_norm": rel(rmsnorm(qm.reshape(-1, p.head_dim), L.q_norm, eps), qn),
            "k_norm": rel(rmsnorm(km.reshape(-1, p.head_dim), L.k_norm, eps), kn),
            "q_rope": rel(rope_neox(qn.copy(), pos, base, fscale), qr),
            "k_rope": rel(rope_neox(kn.copy(), pos, base, fscale), kr),
            "q_scale": rel(qr * np.float32(p.attn_scale), qs),
            "attention": rel(
                attention(
                    qs.astype(f16).astype(np.float32),
                    kr.astype(f16).astype(np.float32),
                    vm.reshape(n, p.n_head_kv, p.head_dim).astype(f16).astype(np.float32),
                    pos,
                    pos,
                    p.window(il),
                    True,
                ),
                kqv,
            ),
            "wo_mm": rel(_mm(L.wo, kqv), wo),
            "sa_out": rel(x_in + rmsnorm(wo, L.post_attn_norm, eps), sa),
            "ffn_norm": rel(rmsnorm(sa, L.ffn_norm, eps), fn),
            "gate_mm": rel(_mm(L.w_gate, fn), gate),
            "up_mm": rel(_mm(L.w_up, fn), up),
            "geglu": rel(geglu(gate, up, True), gg),
            "down_mm": rel(_mm(L.w_down, gg), fo),
            "l_out": rel(sa + rmsnorm(fo, L.post_ffw_norm, eps), lo),
        }
        for k, v in res.items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst


def trace(dumps: list[dict], model, ids: list[int]) -> None:
    """Our own forward pass against llama.cpp's residual stream, layer by layer (median / max over
    positions of the relative error)."""
    import engine.models.gemma3 as g3

    n = len(ids)
    seen: list[np.ndarray] = []
    orig = g3.rmsnorm
    attn_norms = {id(L.attn_norm): il for il, L in enumerate(model.layers)}

    def rn(x, w, eps):
        if id(w) in attn_norms:
            seen.append(np.array(x))
        return orig(x, w, eps)

    g3.rmsnorm = rn
    try:
        model.reset()
        model.forward(np.array(ids), 0)
    finally:
        g3.rmsnorm = orig
    for il, x in enumerate(seen):
        name = "inp_scaled" if il == 0 else f"l_out-{il - 1}"
        ref = next(r for r in dumps if r["name"] == name)["data"].reshape(n, -1)
        e = np.abs(x - ref).max(axis=1) / np.abs(ref).max(axis=1)
        print(f"layer {il:2d} input: relative error median {np.median(e):.1e}, max {e.max():.1e}")


def main(argv: list[str]) -> int:
    from engine.gguf import open_gguf
    from engine.models import load_model

    do_trace = "--trace" in argv
    args = [a for a in argv if a != "--trace"]
    ids = json.loads(args[0]) if args else CHAT_IDS
    dumps, _ = llama_dump(DEFAULT_MODEL, ids)
    model = load_model(open_gguf(DEFAULT_MODEL), n_ctx=2048)
    worst = op_check(dumps, model, len(ids))
    print("worst relative error per op, our op on llama.cpp's input vs llama.cpp's output:")
    for k, v in worst.items():
        print(f"  {k:10s} {v:.1e}")
    if do_trace:
        trace(dumps, model, ids)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
