"""llama, qwen2, qwen3 and phi3 forward passes against llama.cpp's logits on the same files.

The files are tiny random-weight GGUFs (256 wide, 3 layers, GQA, 512-token vocabulary, weights
in Q8_0/Q6_K/Q5_K/Q5_0/Q4_K/Q4_0) that ``scripts/make_arch_fixtures.py`` writes with Kvant's own
writer and quantizer; it ran llama.cpp (llama-cpp-python 0.3.36, 2 threads, f16 KV cache) on them
and stored its logits for a 64-token sequence and its 16 greedy tokens after an 8-token prompt in
``tests/fixtures/arch/<arch>.npz``.  Here the same code rebuilds the same bytes (the hash is
checked), so llama.cpp is not needed.

Bars, from what was measured (ours vs llama.cpp, per arch llama / qwen2 / qwen3 / phi3):

- positions 0 and 1 (before any rounding difference has had a chance to flip a quantum):
  max |Δlogit| <= 1e-5 · max|logit|; measured 4-6e-6 absolute on logits up to 12-23 (< 5e-7
  relative): these are the same numbers up to f32 summation order.  Position 1 already depends
  on RoPE (a wrong rope mode gives 0.8-1.6 there).
- all 64 positions: max |Δlogit| <= 0.15 · std(logits); measured 0.105 / 0.076 / 0.096 / 0.115.
  Mean KL(p_llama || p_ours) <= 3e-3; measured 6.4e-4 / 4.9e-4 / 3.0e-4 / 1.5e-3.  Same top-1 on
  >= 90% of positions; measured 100% / 95.3% / 96.9% / 100%.  Why not tighter: after a few
  positions, f32 summation-order differences flip an fp16 rounding (queries, attention
  probabilities) or a Q8 activation quantum, and random weights amplify that layer after layer.
  llama.cpp against itself (the same file with n_batch=1, its decode kernels, vs its batched
  run) scores max |Δ| 0.24 / 0.21 / 0.25 / 0.22 (0.074-0.091 · std), mean KL 1.1e-4 / 3.1e-4 /
  7.9e-4 / 4.8e-4 and top-1 100% / 98.4% / 95.3% / 98.4%: the same size.  Real defects are orders
  of magnitude above the bars (see ``test_the_comparison_catches_graph_mistakes``: wrong rope
  mode KL 0.85-4.4, missing rope factors 0.95-2.3, phi3's sliding window applied 3.3, phi3
  attn_factor ignored 0.53, wrong attention scale 0.33).
- greedy: the 16 tokens identical (measured 16/16 for all four).
- prefill vs token-by-token decode of our own engine: max |Δ| <= 1e-5 · max|logit| (measured
  <= 9e-7 relative: only the output mat-mul's summation order differs).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "arch"
ARCHS = ("llama", "qwen2", "qwen3", "phi3")

EXACT_POSITIONS = 2
EXACT_REL = 1e-5
MAXABS_STD = 0.15
KL_BAR = 3e-3
TOP1_BAR = 0.90
DECODE_REL = 1e-5


def _script():
    name = "make_arch_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "make_arch_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def kl_rows(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(ours)) per row, over the whole vocabulary."""

    def lsm(x):
        x = x.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = lsm(ref), lsm(ours)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("arch")


@pytest.fixture(scope="module", params=ARCHS)
def case(request, gguf_dir):
    """(arch, fixture, GGUF path, opened engine model) per architecture."""
    import engine

    arch = request.param
    fx = dict(np.load(FIXTURES / f"{arch}.npz"))
    path, sha = _script().build(arch, gguf_dir / f"{arch}.gguf")
    assert sha == str(fx["gguf_sha256"]), f"{arch}: the rebuilt GGUF differs from the one llama.cpp ran"
    model = engine.open_model(path, n_ctx=128)
    yield arch, fx, path, model
    model.close()


def test_architectures_registered():
    from engine.models import ARCHITECTURES, Llama, Phi3, Qwen2, Qwen3

    assert {a: ARCHITECTURES[a] for a in ARCHS} == {
        "llama": Llama,
        "qwen2": Qwen2,
        "qwen3": Qwen3,
        "phi3": Phi3,
    }


def test_hyperparameters(case):
    arch, _, _, model = case
    p = model.net.params
    assert (p.n_embd, p.n_layer, p.n_ff, p.n_vocab) == (256, 3, 512, 512)
    assert (p.n_head, p.n_head_kv, p.head_dim) == {
        "llama": (4, 2, 64),
        "qwen2": (4, 1, 64),
        "qwen3": (4, 2, 128),
        "phi3": (4, 2, 64),
    }[arch]
    assert p.rope_neox == (arch != "llama")
    assert p.attn_scale == pytest.approx(1 / np.sqrt(p.head_dim))
    factors = model.net.freq_factors
    if arch == "llama":
        assert p.rope_base == 500000.0 and factors[0] == 1.0 and factors[-1] == pytest.approx(8.0)
    elif arch == "phi3":  # n_ctx 128 <= original context 4096: the short factors
        assert p.n_ctx_orig == 4096 and p.rope_attn_factor == pytest.approx(1.19023807)
        assert factors.min() >= 1.0 and factors.max() <= 1.5
    else:
        assert (factors == 1.0).all()
    assert (model.net.output is None) == (arch == "qwen2")  # qwen2's fixture ties its output


def test_logits_match_llama_cpp(case):
    arch, fx, _, model = case
    ref = fx["logits"]
    ours = model.logits(fx["tokens"])
    assert ours.shape == ref.shape == (64, 512)
    d = np.abs(ours - ref)
    kl = kl_rows(ref, ours)
    top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    msg = (
        f"{arch}: max|Δ| {d.max():.4f} ({d.max() / ref.std():.3f} std), first positions "
        f"{d[:EXACT_POSITIONS].max():.2e}, mean KL {kl.mean():.2e}, top-1 {top1:.4f}"
    )
    print(msg)
    assert d[:EXACT_POSITIONS].max() <= EXACT_REL * np.abs(ref[:EXACT_POSITIONS]).max(), msg
    assert d.max() <= MAXABS_STD * ref.std(), msg
    assert kl.mean() <= KL_BAR, msg
    assert top1 >= TOP1_BAR, msg


def test_greedy_continuation_matches_llama_cpp(case):
    arch, fx, _, model = case
    net = model.net
    net.reset()
    logits = net.forward(fx["prompt"], 0, last_only=True)
    assert logits.shape == (1, 512)
    out = []
    for _ in range(len(fx["greedy"])):
        t = int(logits[-1].argmax())
        out.append(t)
        logits = net.forward(np.array([t]), net.n_past)
    assert out == fx["greedy"].tolist(), arch


def test_token_by_token_decode_is_llama_cpps(case):
    """One token at a time is llama.cpp's ``n_batch=1`` run (its one-token kernels: gemv, vec_dot
    attention), not its batched one; a batch restarting inside the cache replaces what follows."""
    arch, fx, _, model = case
    net = model.net
    tokens = fx["tokens"]
    want = fx["decode_logits"]
    n = len(want)
    net.reset()
    steps = np.concatenate([net.forward(tokens[i : i + 1], i) for i in range(n)])
    d = np.abs(steps - want).max()
    assert d <= DECODE_REL * np.abs(want).max(), f"{arch}: decode max |Δ| {d:.2e}"
    batch = net.logits_all(tokens[:40])
    # batches of 8 run the same kernels as the whole batch's rows (llama.cpp's kernel choice depends
    # on the batch size: Q4_K gemm on whole groups of 4 tokens, Q6_K's tiled path from 8 tokens)
    for start, stop in ((32, 40), (24, 32)):
        again = net.forward(tokens[start:stop], start)
        assert np.abs(again - batch[start:stop]).max() <= DECODE_REL * np.abs(batch).max(), (arch, start)


def test_observer_sees_every_weight_input(case):
    arch, fx, path, model = case
    from engine.gguf import open_gguf

    seen: list[tuple[str, tuple[int, ...]]] = []
    model.net.observer = lambda name, x: seen.append((name, x.shape))
    try:
        model.logits(fx["tokens"][:3])
    finally:
        model.net.observer = None
    per_layer = {
        "phi3": ["attn_qkv", "attn_output", "ffn_up", "ffn_down"],
        "llama": ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"],
    }.get(arch, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"])
    want = [f"blk.{il}.{t}.weight" for il in range(3) for t in per_layer]
    want.append("token_embd.weight" if arch == "qwen2" else "output.weight")
    assert [n for n, _ in seen] == want
    with open_gguf(path) as g:
        matrices = {t.name for t in g.tensors if len(t.shape) == 2} - {"token_embd.weight"}
        for name, shape in seen:
            assert shape == (3, int(g.tensor(name).shape[1])), name  # (tokens, the weight's columns)
    assert matrices <= {n for n, _ in seen}  # every mat-mul weight is reported (imatrix needs them)


def test_the_comparison_catches_graph_mistakes(case, monkeypatch):
    """The bars are not loose: plausible porting mistakes push mean KL far above KL_BAR."""
    import engine.models._common as common

    arch, fx, _, model = case
    net = model.net
    p0 = net.params

    def kl_with(**changes) -> float:
        net.params = dataclasses.replace(p0, **changes)
        try:
            return float(kl_rows(fx["logits"], net.logits_all(fx["tokens"])).mean())
        finally:
            net.params = p0

    assert kl_with(rope_neox=not p0.rope_neox) > 100 * KL_BAR
    assert kl_with(attn_scale=p0.attn_scale * 1.25) > 10 * KL_BAR
    if arch in ("llama", "phi3"):
        ff = net.freq_factors
        net.freq_factors = np.ones_like(ff)
        try:
            assert kl_with() > 100 * KL_BAR
        finally:
            net.freq_factors = ff
    if arch == "phi3":
        assert kl_with(rope_attn_factor=1.0) > 100 * KL_BAR
        attention_kt = common.attention_kt
        monkeypatch.setattr(
            common,
            "attention_kt",
            lambda q, kt, v, sp, ns, qp, w, r, s: attention_kt(q, kt, v, sp, ns, qp, 16, r, s),
        )
        assert kl_with() > 100 * KL_BAR  # llama.cpp ignores phi3's sliding_window: so must we


def test_phi3_long_context_uses_the_long_rope_factors(gguf_dir):
    """n_ctx 8192 > rope.scaling.original_context_length 4096: llama.cpp switches to
    rope_factors_long (its logits move by up to 13 from the n_ctx 128 run); so do we, within the
    same bars (measured: max |Δ| 0.29 (0.107 std), first two positions 3.8e-6, mean KL 1.3e-3,
    top-1 95.3%)."""
    import engine

    fx = dict(np.load(FIXTURES / "phi3.npz"))
    path, sha = _script().build("phi3", gguf_dir / "phi3-long.gguf")
    assert sha == str(fx["gguf_sha256"])
    ref = fx["logits_long_ctx"]
    assert np.abs(ref - fx["logits"]).max() > 1.0  # the long factors really change the result
    with engine.open_model(path, n_ctx=8192) as model:
        assert model.net.freq_factors.max() > 30  # rope_factors_long (1 .. 40)
        ours = model.logits(fx["tokens"])
    d = np.abs(ours - ref)
    kl = kl_rows(ref, ours)
    msg = f"max|Δ| {d.max():.4f}, first {d[:EXACT_POSITIONS].max():.2e}, mean KL {kl.mean():.2e}"
    assert d[:EXACT_POSITIONS].max() <= EXACT_REL * np.abs(ref[:EXACT_POSITIONS]).max(), msg
    assert d.max() <= MAXABS_STD * ref.std(), msg
    assert kl.mean() <= KL_BAR, msg
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= TOP1_BAR, msg


# ------------------------------------------------------------------------------- phi3 from Hugging Face


def test_phi3_hugging_face_import_runs_like_llama_cpp(tmp_path):
    """A tiny Phi-3.5-style safetensors folder (BF16, fused qkv_proj / gate_up_proj, longrope
    short/long factors, SentencePiece tokenizer) converted by Kvant to Q8_0: llama.cpp loaded the
    result (the fixture holds its logits and greedy tokens on these exact bytes) and our engine
    runs it the same.  Measured: max |Δ| 0.095 (0.040 std), first two positions 4.3e-6, mean KL
    1.7e-4, top-1 100%, greedy 16/16."""
    import math

    import engine
    from engine.gguf import open_gguf

    script = _script()
    fx = dict(np.load(FIXTURES / "phi3-hf.npz"))
    path, sha = script.build_hf_phi3_gguf(tmp_path / "tiny-phi3", tmp_path / "phi3-hf.gguf")
    assert sha == str(fx["gguf_sha256"]), "the converted GGUF differs from the one llama.cpp ran"
    cfg = json.loads((tmp_path / "tiny-phi3" / "config.json").read_text())
    with open_gguf(path) as g:
        assert g.get("general.architecture") == "phi3"
        assert (
            g.get("phi3.context_length") == 131072
            and g.get("phi3.rope.scaling.original_context_length") == 4096
        )
        assert g.get("phi3.rope.dimension_count") == 64 and g.get("phi3.attention.sliding_window") == 262144
        want_af = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
        assert g.get("phi3.rope.scaling.attn_factor") == pytest.approx(want_af, rel=1e-6)
        np.testing.assert_array_equal(
            g.array("rope_factors_short.weight"), np.float32(cfg["rope_scaling"]["short_factor"])
        )
        np.testing.assert_array_equal(
            g.array("rope_factors_long.weight"), np.float32(cfg["rope_scaling"]["long_factor"])
        )
        assert tuple(g.tensor("blk.1.attn_qkv.weight").shape) == (512, 256)
        assert tuple(g.tensor("blk.1.ffn_up.weight").shape) == (1024, 256)
        assert not g.has_tensor("blk.0.attn_q.weight") and not g.has_tensor("blk.0.ffn_gate.weight")
        assert g.get("tokenizer.ggml.model") == "llama"
        assert list(g.get("tokenizer.ggml.tokens")[310:314]) == [
            "<|endoftext|>",
            "<|assistant|>",
            "<|end|>",
            "<|user|>",
        ]
    with engine.open_model(path, n_ctx=128) as model:
        ref = fx["logits"]
        ours = model.logits(fx["tokens"])
        d = np.abs(ours - ref)
        kl = kl_rows(ref, ours)
        top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
        first = d[:EXACT_POSITIONS].max()
        msg = f"phi3-hf: max|Δ| {d.max():.4f}, first {first:.2e}, KL {kl.mean():.2e}, top-1 {top1}"
        assert d[:EXACT_POSITIONS].max() <= EXACT_REL * np.abs(ref[:EXACT_POSITIONS]).max(), msg
        assert d.max() <= MAXABS_STD * ref.std(), msg
        assert kl.mean() <= KL_BAR and top1 >= TOP1_BAR, msg
        net = model.net
        net.reset()
        logits = net.forward(fx["prompt"], 0, last_only=True)
        out = []
        for _ in range(len(fx["greedy"])):
            out.append(int(logits[-1].argmax()))
            logits = net.forward(np.array([out[-1]]), net.n_past)
        assert out == fx["greedy"].tolist()


# ------------------------------------------------------------------------------- broken files


def _load(tmp_path, arch, **kw):
    from engine.gguf import open_gguf
    from engine.models import load_model

    path, _ = _script().build(arch, tmp_path / f"{arch}-broken.gguf", **kw)
    with open_gguf(path) as g:
        return load_model(g, n_ctx=32)


@pytest.mark.parametrize(
    ("arch", "drop", "needle"),
    [
        ("llama", ("blk.1.ffn_down.weight",), "tensor blk.1.ffn_down.weight is missing"),
        ("qwen2", ("blk.0.attn_k.bias",), "tensor blk.0.attn_k.bias is missing"),
        ("qwen3", ("blk.2.attn_q_norm.weight",), "tensor blk.2.attn_q_norm.weight is missing"),
        ("phi3", ("output_norm.weight",), "tensor output_norm.weight is missing"),
        ("qwen3", ("qwen3.block_count",), "metadata key qwen3.block_count is missing"),
        (
            "phi3",
            ("phi3.attention.layer_norm_rms_epsilon",),
            "phi3.attention.layer_norm_rms_epsilon is missing",
        ),
    ],
)
def test_missing_tensor_or_key_is_a_clear_model_error(tmp_path, arch, drop, needle):
    with pytest.raises(ModelError, match=needle.replace(".", r"\.")):
        _load(tmp_path, arch, drop=drop)


def test_unsupported_rope_scaling_and_wrong_arch(tmp_path):
    from gguf import GGUFValueType as V

    from engine.gguf import MetadataValue, open_gguf
    from engine.models import Qwen3

    with pytest.raises(ModelError, match="YaRN"):
        _load(tmp_path, "qwen2", meta={"qwen2.rope.scaling.type": MetadataValue(V.STRING, "yarn")})
    path, _ = _script().build("qwen2", tmp_path / "q2.gguf")
    with open_gguf(path) as g, pytest.raises(ModelError, match="architecture is 'qwen2', not 'qwen3'"):
        Qwen3.from_gguf(g, n_ctx=32)


# ------------------------------------------------------------------------------- the new ops


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_rot", [64, 32])
def test_rope_kernel_equals_reference(neox, n_rot):
    from engine.runtime.kernels.ops import rope, rope_ref

    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 3, 64)).astype(np.float32)
    pos = np.arange(100, 137)
    ff = rng.uniform(1.0, 8.0, n_rot // 2).astype(np.float32)
    want = rope_ref(x, pos, n_rot, 500000.0, 0.25, ff, 1.19, neox)
    got = rope(x.copy(), pos, n_rot, 500000.0, 0.25, ff, 1.19, neox)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got[:, :, n_rot:], x[:, :, n_rot:])  # beyond n_rot: untouched
    # a rotation (mscale 1) keeps each pair's norm; a NORM-mode pair is adjacent
    plain = rope(x.copy(), pos, 64, 10000.0, 1.0, np.ones(32, np.float32), 1.0, neox)
    i0, i1 = (np.arange(32), np.arange(32) + 32) if neox else (np.arange(0, 64, 2), np.arange(1, 64, 2))
    np.testing.assert_allclose(
        plain[..., i0] ** 2 + plain[..., i1] ** 2, x[..., i0] ** 2 + x[..., i1] ** 2, rtol=1e-5
    )


def test_rope_neox_mode_equals_the_gemma3_kernel():
    from engine.runtime.kernels import rope_neox
    from engine.runtime.kernels.ops import rope

    x = np.random.default_rng(6).standard_normal((20, 2, 128)).astype(np.float32)
    pos = np.arange(500, 520)
    a = rope(x.copy(), pos, 128, 1e6, 1.0, np.ones(64, np.float32), 1.0, True)
    b = rope_neox(x.copy(), pos, 1e6, 1.0)
    np.testing.assert_array_equal(a, b)


def test_swiglu_kernel_equals_reference():
    from engine.runtime.kernels.ops import swiglu, swiglu_ref

    rng = np.random.default_rng(7)
    g = (rng.standard_normal((5, 300)) * 4).astype(np.float32)
    g[0, :4] = [-100.0, 100.0, 0.0, -0.0]
    gu = np.concatenate([g, rng.standard_normal((5, 300)).astype(np.float32)], axis=1)
    gate, up = gu[:, :300], gu[:, 300:]  # phi3's fused halves: non-contiguous views
    got = swiglu(gate, up)
    np.testing.assert_allclose(got, swiglu_ref(gate, up), rtol=2e-7, atol=1e-30)
    silu = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64)))
    np.testing.assert_allclose(got, silu * up, rtol=1e-6, atol=1e-30)
