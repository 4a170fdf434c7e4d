"""CPU mat-vec kernels for every weight type, against llama.cpp and against NumPy references.

Fixtures (tests/fixtures/kernels/<TYPE>.npz, made by scripts/make_kernel_fixtures.py) hold weights
quantized by llama.cpp, activations, llama.cpp's converted activations (``from_float`` of the type's
vec_dot_type) and llama.cpp's own ``vec_dot`` results (the CPU backend's dispatched SIMD kernel and,
where exported and consistent, the generic C one), so nothing here needs llama-cpp-python.

Tolerance ("f32 rounding"): ``|ours - theirs| <= TOL_ULPS · 2^-23 · B`` per output, where
``B = Σ_k |w_k|·|x̂_k|`` (+ ``Σ_b |m_b|·|s_b|`` for Q4_1/Q5_1) is the magnitude of the terms summed,
``x̂`` the converted activations.  Integer block sums are exact on both sides; only the order and
rounding of the f32 block-scale products and the f32 summation differ, which a sequential f32 sum
bounds by ~(blocks + 2)·2^-23·B (worst case 18 here); measured: at most 2.6 (TQ2_0, dispatched
kernel), 0 against most generic C kernels (bit-identical).  :func:`test_tolerance_detects_llama_cpp_details`
shows the bound is tight enough to see each llama.cpp detail we reproduce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelError
from engine.quant import dequantize
from engine.runtime.kernels import (
    QTYPES,
    dequantize_rows,
    matmul_dense,
    matmul_ref,
    matvec,
    quantize_act,
    repack,
)
from engine.runtime.kernels.actquant import (
    quantize_q8_0,
    quantize_q8_1,
    quantize_q8_1_ref,
    quantize_q8_k,
    round_bf16,
    round_bf16_ref,
    round_f16,
    round_f16_ref,
)
from engine.runtime.kernels.qmatmul import VEC_DOT_TYPE, act_float

FIXTURES = Path(__file__).parent / "fixtures" / "kernels"
EPS = float(np.finfo(np.float32).eps)
TOL_ULPS = 8.0
IDS = {name: tid for tid, (name, _, _) in QTYPES.items()}
ALL = sorted(IDS, key=IDS.get)
# types whose generic C vec_dot is not in the fixtures (not exported, or inconsistent: see the script)
NO_GENERIC = {"F32", "F16", "BF16", "Q5_0"}

# byte offsets of each block's fp16 scales (random blocks get sane values there)
F16_AT = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
    "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ2_XXS": (0,), "IQ2_XS": (0,),
    "IQ3_XXS": (0,), "IQ1_S": (0,), "IQ4_NL": (0,), "IQ3_S": (0,), "IQ2_S": (0,), "IQ4_XS": (0,),
    "TQ1_0": (52,), "TQ2_0": (64,),
}  # fmt: skip


def _fixture(name: str):
    z = np.load(FIXTURES / f"{name}.npz")
    return {k: z[k] for k in z.files}


def _w_min(w) -> np.ndarray | None:
    return w.fields[-1] if VEC_DOT_TYPE[w.qtype] == "Q8_1" else None


def _bound(w, w_f32: np.ndarray, x: np.ndarray) -> np.ndarray:
    """B (n, rows): magnitude of the summed terms, for the f32-rounding tolerance."""
    act = quantize_act(w, x)
    b = np.abs(act_float(act)).astype(np.float64) @ np.abs(w_f32.astype(np.float64)).T
    if VEC_DOT_TYPE[w.qtype] == "Q8_1":
        b += np.abs(act[2]).astype(np.float64) @ np.abs(w.fields[-1]).astype(np.float64).T
    return b


def _assert_close(got, want, bound, what: str) -> None:
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float((err / (EPS * bound)).max())
    assert worst <= TOL_ULPS, f"{what}: {worst:.2f} × 2^-23·B > {TOL_ULPS}"


def _random_blocks(name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random bytes for every block field (all codes, grid indices, signs, scales), with finite,
    realistic fp16 / E8M0 super-scales; float types get random finite values."""
    rng = np.random.default_rng(seed)
    _, bk, bb = QTYPES[IDS[name]]
    if name == "F32":
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if name in ("F16", "BF16"):
        v = rng.standard_normal((rows, cols)).astype(np.float32)
        v[0, :4] = [0.0, -0.0, 3e-6, -6e-8]  # zeros and fp16 subnormals
        if name == "F16":
            return v.astype(np.float16).view(np.uint8)
        return (round_bf16_ref(v).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blk = rng.integers(0, 256, (rows, cols // bk, bb), dtype=np.uint8)
    for off in F16_AT.get(name, ()):
        d = (rng.standard_normal(blk.shape[:2]) * 0.02).astype(np.float16)
        blk[:, :, off : off + 2] = d.view(np.uint8).reshape(*blk.shape[:2], 2)
    if name == "MXFP4":
        blk[:, :, 0] = rng.integers(110, 135, blk.shape[:2])
    if name == "IQ1_M":  # fp16 super-scale in the top nibbles of the scales: sign + small exponent
        blk[:, :, 55] = (blk[:, :, 55] & 0x0F) | (
            rng.choice([0x2, 0x3, 0xA, 0xB], blk.shape[:2]) << 4
        ).astype(np.uint8)
    return blk.reshape(rows, -1)


# ============================================================================ against llama.cpp


@pytest.mark.parametrize("name", ALL)
def test_matvec_matches_llama_cpp_vec_dot(name):
    fx = _fixture(name)
    raw, x = fx["raw"], fx["x"]
    rows, cols = raw.shape[0], x.shape[1]
    w = repack(raw, IDS[name], rows, cols)
    w_f32 = np.asarray(dequantize(raw, name, (rows, cols)), np.float32)
    bound = _bound(w, w_f32, x)
    got = matvec(w, x)
    _assert_close(got, fx["dot"], bound, f"{name} matvec vs llama.cpp vec_dot")
    _assert_close(matmul_dense(w, x), fx["dot"], bound, f"{name} matmul_dense vs llama.cpp vec_dot")
    if name not in NO_GENERIC:
        _assert_close(got, fx["dot_generic"], bound, f"{name} matvec vs llama.cpp generic vec_dot")
    assert ("dot_generic" in fx) == (name not in NO_GENERIC)
    # per-row results, one activation row at a time, are the same kernel's
    np.testing.assert_array_equal(matvec(w, x[1:2])[0], got[1])


@pytest.mark.parametrize("name", ALL)
def test_activations_match_llama_cpp_from_float(name):
    """Our activation conversion gives llama.cpp's vec_dot_type bytes exactly."""
    fx = _fixture(name)
    x, act = fx["x"], fx["act"]
    n, k = x.shape
    vdt = VEC_DOT_TYPE[name]
    if vdt == "F32":
        np.testing.assert_array_equal(act.view(np.float32), x)
    elif vdt == "F16":
        np.testing.assert_array_equal(round_f16(x), act.view(np.float16).astype(np.float32))
    elif vdt == "BF16":
        want = (act.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(round_bf16(x).view(np.uint32), want.view(np.uint32))
    elif vdt == "Q8_K":  # f32 d; int8 qs[256]; int16 bsums[16]
        blk = act.reshape(n, k // 256, 292)
        q, d, bs = quantize_q8_k(x)
        np.testing.assert_array_equal(d, blk[:, :, 0:4].copy().view(np.float32)[..., 0])
        np.testing.assert_array_equal(q, blk[:, :, 4:260].copy().view(np.int8).reshape(n, k))
        np.testing.assert_array_equal(bs, blk[:, :, 260:292].copy().view(np.int16).reshape(n, -1))
    else:  # Q8_0: fp16 d, int8 qs[32];  Q8_1: fp16 d, fp16 s, int8 qs[32]
        o = 4 if vdt == "Q8_1" else 2
        blk = act.reshape(n, k // 32, 32 + o)
        q, d = quantize_q8_0(x)
        np.testing.assert_array_equal(d, blk[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
        np.testing.assert_array_equal(q, blk[:, :, o:].copy().view(np.int8).reshape(n, k))
        if vdt == "Q8_1":
            s = blk[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            np.testing.assert_array_equal(quantize_q8_1(x)[2], s)


@pytest.mark.parametrize("name", ALL)
def test_dequantize_rows_matches_engine_quant(name):
    for raw, rows, cols in (
        (_fixture(name)["raw"], 16, 512),
        (_random_blocks(name, 12, 768, IDS[name]), 12, 768),
    ):
        w = repack(raw, IDS[name], rows, cols)
        want = np.asarray(dequantize(raw, name, (rows, cols)), np.float32)
        np.testing.assert_array_equal(dequantize_rows(w).view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(dequantize_rows(w, 3, 7).view(np.uint32), want[3:7].view(np.uint32))


def test_f16_weights_special_values_dequantize_exactly():
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)  # every fp16 bit pattern
    w = repack(h.view(np.uint8), IDS["F16"], 256, 256)
    np.testing.assert_array_equal(
        dequantize_rows(w).view(np.uint32), h.view(np.float16).astype(np.float32).view(np.uint32)
    )


# ============================================================================ Numba vs NumPy reference


@pytest.mark.parametrize("name", ALL)
def test_matvec_equals_numpy_reference(name):
    rows, cols = 40, 768
    raw = _random_blocks(name, rows, cols, 1000 + IDS[name])
    w = repack(raw, IDS[name], rows, cols)
    w_f32 = np.asarray(dequantize(raw, name, (rows, cols)), np.float32)
    rng = np.random.default_rng(IDS[name])
    x = (rng.standard_normal((3, cols)) * rng.uniform(0.1, 30, (3, 1))).astype(np.float32)
    x[1, 256:512] = 0.0  # an all-zero activation super-block
    want = matmul_ref(w_f32, name, x, _w_min(w))
    bound = _bound(w, w_f32, x)
    _assert_close(matvec(w, x), want, bound, f"{name} matvec vs NumPy reference")
    _assert_close(matmul_dense(w, x, chunk_rows=16), want, bound, f"{name} matmul_dense vs NumPy reference")


@pytest.mark.parametrize("name", ["Q2_K", "Q4_1", "Q5_1", "IQ4_NL", "MXFP4", "IQ4_XS", "Q3_K"])
def test_matvec_wide_rows_equal_numpy_reference(name):
    """Rows of 5 super-blocks / 40 blocks: the kernels' four-blocks-per-pass paths and their
    remainders both run (the rows above are too short for some of them)."""
    rows, cols = 8, 1280
    raw = _random_blocks(name, rows, cols, 2000 + IDS[name])
    w = repack(raw, IDS[name], rows, cols)
    w_f32 = np.asarray(dequantize(raw, name, (rows, cols)), np.float32)
    x = np.random.default_rng(IDS[name]).standard_normal((2, cols)).astype(np.float32)
    want = matmul_ref(w_f32, name, x, _w_min(w))
    _assert_close(matvec(w, x), want, _bound(w, w_f32, x), f"{name} wide matvec vs NumPy reference")


def test_new_activation_conversions_equal_references():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 512)) * rng.uniform(1e-3, 1e3, (4, 1))).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :6] = [np.inf, -np.inf, np.nan, 1e-40, -1e-45, 65520.0]
    for got, want in zip(quantize_q8_1(x[2:]), quantize_q8_1_ref(x[2:]), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(round_f16(x).view(np.uint32), round_f16_ref(x).view(np.uint32))
    np.testing.assert_array_equal(round_bf16(x).view(np.uint32), round_bf16_ref(x).view(np.uint32))


def test_f16_portable_kernel_equals_numpy_reference():
    """The integer-op fp16 conversion of CPUs without native fp16 (``mv_f16_bits``) against the
    reference, every fp16 bit pattern included (zeros, subnormals, inf/NaN rows apart)."""
    from engine.runtime.kernels import qkernels as qk

    h = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    finite = np.isfinite(h.view(np.float16)).all(axis=1)
    x = np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)
    w = repack(h.view(np.uint8), IDS["F16"], 256, 256)
    act = quantize_act(w, x)
    got = np.empty((2, 256), np.float32)
    qk.mv_f16_bits(w.fields[0], act[0], got)
    w_f32 = dequantize_rows(w)
    want = matmul_ref(w_f32[finite], "F16", x)
    _assert_close(got[:, finite], want, _bound(w, w_f32[finite], x), "F16 portable kernel")
    assert not np.isfinite(got[:, ~finite]).any()
    if qk._HALF_NATIVE:
        native = np.empty_like(got)
        qk.mv_f16_native(w.fields[0], act[0], native)
        np.testing.assert_array_equal(native[:, finite], got[:, finite])


def test_lut16_lookups_equal_numpy():
    """The 16-entry table lookup of IQ4_NL / IQ4_XS / MXFP4 codes: the pshufb path (where the CPU
    has it) and the lane-by-lane path of other CPUs both give kv[low nibble], kv[high nibble]."""
    from numba import njit

    from engine.runtime.kernels import qkernels as qk

    def runner(lut):
        @njit
        def run(src, kv, dst):
            for b in range(src.size // 16):
                lut(src, b * 16, kv, dst, b * 32)

        return run

    src = np.random.default_rng(3).integers(0, 256, 16 * 40, dtype=np.uint8)
    src[:16] = np.arange(16) * 17  # every index in both nibbles
    for kv in (qk.KVALUES_IQ4NL, qk.KVALUES_MXFP4):
        want = np.stack([kv[src.reshape(-1, 16) & 15], kv[src.reshape(-1, 16) >> 4]], axis=1).reshape(-1)
        paths = [qk._lut16_generic] + ([qk._lut16_pshufb] if qk._PSHUFB else [])
        for lut in paths:
            got = np.zeros(src.size * 2, np.int8)
            runner(lut)(src, kv, got)
            np.testing.assert_array_equal(got, want)


# ============================================================================ the checks can fail


def test_tolerance_detects_llama_cpp_details():
    """Each llama.cpp detail we reproduce moves results by more than the tolerance, so the
    comparisons above would catch getting it wrong."""
    # Q4_1: llama.cpp adds m·s with s = fp16(d·Σq); using the unrounded block sum is visible
    fx = _fixture("Q4_1")
    raw, x = fx["raw"], fx["x"]
    w = repack(raw, IDS["Q4_1"], 16, 512)
    w_f32 = np.asarray(dequantize(raw, "Q4_1", (16, 512)), np.float32)
    q, d, _ = quantize_act(w, x)
    exact_s = (q.reshape(2, 16, 32).astype(np.int32).sum(axis=2) * d).astype(np.float32)
    with pytest.raises(AssertionError):
        _assert_close(matvec(w, x, act=(q, d, exact_s)), fx["dot"], _bound(w, w_f32, x), "Q4_1 exact s")
    # F16: activations rounded to fp16 first; unrounded activations are visible
    fx = _fixture("F16")
    w = repack(fx["raw"], IDS["F16"], 16, 512)
    w_f32 = dequantize_rows(w)
    with pytest.raises(AssertionError):
        _assert_close(
            matvec(w, fx["x"], act=(fx["x"],)), fx["dot"], _bound(w, w_f32, fx["x"]), "F16 unrounded"
        )
    # IQ2_XXS: one grid point of one weight row changed is visible in that row
    fx = _fixture("IQ2_XXS")
    raw = fx["raw"].copy()
    raw[5, 2] ^= 1
    w = repack(raw, IDS["IQ2_XXS"], 16, 512)
    w_f32 = dequantize_rows(w)
    with pytest.raises(AssertionError):
        _assert_close(matvec(w, fx["x"]), fx["dot"], _bound(w, w_f32, fx["x"]), "IQ2_XXS one grid index")


# ============================================================================ errors


def test_unsupported_type_is_a_clear_model_error():
    with pytest.raises(
        ModelError, match=r"no CPU kernel for weights of type NVFP4 \(GGML type 40\); supported: F32"
    ):
        repack(np.zeros(36, np.uint8), 40, 1, 64)
    with pytest.raises(ModelError, match="GGML type 99"):
        repack(np.zeros(34, np.uint8), 99, 1, 32)
    with pytest.raises(ModelError, match="whole number of 256-element blocks"):
        repack(np.zeros(84, np.uint8), IDS["Q2_K"], 1, 128)
    with pytest.raises(ModelError, match="needs 168 bytes"):
        repack(np.zeros(84, np.uint8), IDS["Q2_K"], 2, 256)


@pytest.mark.skipif(
    not __import__("engine.runtime.kernels.simd", fromlist=["has_fma"]).has_fma(), reason="no FMA"
)
def test_q8_0_matvec_is_llama_cpp_bit_for_bit():
    """Q8_0 runs llama.cpp's own x86 arithmetic (8 lanes of 4-product integer sums, fused
    multiply-add per block, hsum_float_8; engine.runtime.kernels.simd): with llama.cpp's
    activation codes the products are its dispatched vec_dot's, bit for bit, not just close."""
    fx = _fixture("Q8_0")
    raw, x = fx["raw"], fx["x"]
    w = repack(raw, IDS["Q8_0"], raw.shape[0], x.shape[1])
    got = matvec(w, x)
    np.testing.assert_array_equal(got.view(np.uint32), fx["dot"].view(np.uint32))


@pytest.mark.skipif(
    not __import__("engine.runtime.kernels.simd", fromlist=["has_fma"]).has_fma(), reason="no FMA"
)
@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_kquant_matvec_is_llama_cpp_bit_for_bit(name):
    """Q4_K, Q5_K and Q6_K run llama.cpp's own x86 arithmetic (8 lanes of scaled 4-product integer
    sums per block, fused multiply-add into 8 f32 lanes, Q4_K's mins in 4 more lanes, Q5_K's in a
    fused scalar, Q6_K's -32 through the block sums, hsum_float_8; engine.runtime.kernels.simd):
    its dispatched vec_dot bit for bit, and so is prefill (qgemm) for any token count."""
    from engine.runtime.kernels.qgemm import qgemm

    fx = _fixture(name)
    raw, x, dot = fx["raw"], fx["x"], fx["dot"]
    if name == "Q4_K":  # llama.cpp repacks Q4_K weights of a multiple of 8 rows (see below); not these
        raw, dot = raw[:15], dot[:, :15]
    w = repack(raw, IDS[name], raw.shape[0], x.shape[1])
    np.testing.assert_array_equal(matvec(w, x).view(np.uint32), dot.view(np.uint32))
    # with llama.cpp's activation codes (Q8_K blocks: f32 d, 256 int8 codes, 16 int16 block sums)
    blocks = fx["act"].reshape(len(x), -1, 292)
    act = (
        np.ascontiguousarray(blocks[:, :, 4:260]).view(np.int8).reshape(len(x), -1),
        np.ascontiguousarray(blocks[:, :, :4]).view(np.float32).reshape(len(x), -1),
        np.ascontiguousarray(blocks[:, :, 260:]).view(np.int16).reshape(len(x), -1).astype(np.int32),
    )
    np.testing.assert_array_equal(matvec(w, x, act=act).view(np.uint32), dot.view(np.uint32))
    # the tokens repeated: one-token and 2 x 4 tiles of the kernel (Q6_K: llama.cpp runs 8 or more
    # tokens through its tiled kernel instead of this vec_dot, see below)
    for n in (1, 5, 9) if name != "Q6_K" else (1, 5, 7):
        xs = np.resize(x, (n, x.shape[1]))
        got = qgemm(w, xs)
        np.testing.assert_array_equal(got.view(np.uint32), np.resize(dot, got.shape).view(np.uint32))


def _repack_cases():
    fx = np.load(FIXTURES / "Q4_K_repack.npz")
    return [(fx[f"c{c}_raw"], fx[f"c{c}_x"], fx[f"c{c}_out"]) for c in range(len(fx.files) // 3)]


@pytest.mark.skipif(
    not __import__("engine.runtime.kernels.simd", fromlist=["has_fma"]).has_fma(), reason="no FMA"
)
def test_q4k_repacked_matmul_is_llama_cpp_bit_for_bit():
    """Q4_K weights of a multiple of 8 rows run llama.cpp's repacked arithmetic (its
    ggml_gemm_q4_K_8x8_q8_K for the first n - n % 4 columns, ggml_gemv_q4_K_8x8_q8_K for the rest):
    the default model's own matrices and activations (tests/fixtures/kernels/Q4_K_repack.npz, made
    by scripts/make_q4k_repack_fixture.py from llama.cpp's graph) give llama.cpp's outputs bit for
    bit, through matvec, qgemm and the NumPy reference."""
    from engine.runtime.kernels.actquant import quantize_q8_k
    from engine.runtime.kernels.qgemm import qgemm
    from engine.runtime.kernels.qmatmul import q4k_gemm_cols, q4k_repack_ref

    cases = _repack_cases()
    assert [len(x) for _, x, _ in cases] == [9, 5, 1]  # gemm + gemv, gemm + gemv, decode
    for raw, x, want in cases:
        w = repack(raw, IDS["Q4_K"], raw.shape[0], x.shape[1])
        bits = want.view(np.uint32)
        np.testing.assert_array_equal(matvec(w, x).view(np.uint32), bits)
        np.testing.assert_array_equal(qgemm(w, x).view(np.uint32), bits)
        ref = q4k_repack_ref(w, *quantize_q8_k(x), q4k_gemm_cols(len(x)))
        np.testing.assert_array_equal(ref.view(np.uint32), bits)
        for t in range(len(x) - len(x) % 4, len(x)):  # a gemv column alone is the same column
            np.testing.assert_array_equal(matvec(w, x[t : t + 1])[0].view(np.uint32), bits[t])


def test_q4k_repack_fixture_tells_the_arithmetics_apart():
    """The fixture can fail: its gemm columns are not what the gemv (or llama.cpp's vec_dot, the
    arithmetic of weights it does not repack) gives."""
    raw, x, want = _repack_cases()[0]
    w = repack(raw, IDS["Q4_K"], raw.shape[0], x.shape[1])
    gemv_all = matvec(w, x, gemm_cols=0)
    assert not np.array_equal(gemv_all[:8], want[:8])
    np.testing.assert_array_equal(gemv_all[8:].view(np.uint32), want[8:].view(np.uint32))
    w15 = repack(np.concatenate([raw, raw[:7]]), IDS["Q4_K"], 15, x.shape[1])  # not repacked by llama.cpp
    assert not np.array_equal(matvec(w15, x)[:, :8], want)


@pytest.mark.parametrize("rows", [40, 8])
def test_q4k_repacked_kernel_equals_numpy_reference(rows):
    """Every split of the columns between the gemm and the gemv arithmetic, several 16-column lane
    groups and a partial one, a row count with a single row left after the pairs (40 = 2 x 16 + 8
    rows: the last task has 8)."""
    from engine.runtime.kernels.actquant import quantize_q8_k
    from engine.runtime.kernels.qmatmul import q4k_repack_ref

    cols = 768
    raw = _random_blocks("Q4_K", rows, cols, 3000 + rows)
    w = repack(raw, IDS["Q4_K"], rows, cols)
    rng = np.random.default_rng(rows)
    for n in (1, 3, 4, 7, 20, 70):
        x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 30, (n, 1))).astype(np.float32)
        x[0, 256:512] = 0.0  # an all-zero activation super-block
        act = quantize_q8_k(x)
        for g in sorted({0, n - n % 4, n, n // 2}):
            got = matvec(w, x, gemm_cols=g)
            want = q4k_repack_ref(w, *act, g)
            np.testing.assert_array_equal(
                got.view(np.uint32), want.view(np.uint32), err_msg=f"n={n} gemm={g}"
            )
    with pytest.raises(ValueError):
        matvec(w, x, gemm_cols=n + 1)


def _q6k_cases():
    fx = np.load(FIXTURES / "Q6_K_tiled.npz")
    return [(fx[f"c{c}_raw"], fx[f"c{c}_x"], fx[f"c{c}_out"]) for c in range(len(fx.files) // 3)]


@pytest.mark.skipif(
    not __import__("engine.runtime.kernels.simd", fromlist=["has_fma"]).has_fma(), reason="no FMA"
)
def test_q6k_matmul_is_llama_cpp_bit_for_bit():
    """Q6_K mat-muls of 8 or more activation rows run llama.cpp's tiled arithmetic (its
    ggml_compute_forward_mul_mat_tiled: one fused multiply-add per block), fewer its vec_dot's: the
    default model's own ffn_down matrices and activations on both sides of the threshold
    (tests/fixtures/kernels/Q6_K_tiled.npz, made by scripts/make_q6k_repack_fixture.py from
    llama.cpp's graph) give llama.cpp's outputs bit for bit, through matvec, qgemm and the NumPy
    reference; each case is not what the other arithmetic gives."""
    from engine.runtime.kernels.actquant import quantize_q8_k
    from engine.runtime.kernels.qgemm import qgemm
    from engine.runtime.kernels.qmatmul import _q6k_llama, q6k_tiled, q6k_tiled_ref

    cases = _q6k_cases()
    assert [len(x) for _, x, _ in cases] == [8, 7]
    assert [q6k_tiled(len(x)) for _, x, _ in cases] == [True, False]
    for raw, x, want in cases:
        w = repack(raw, IDS["Q6_K"], raw.shape[0], x.shape[1])
        bits = want.view(np.uint32)
        np.testing.assert_array_equal(matvec(w, x).view(np.uint32), bits)
        np.testing.assert_array_equal(qgemm(w, x).view(np.uint32), bits)
        act = quantize_q8_k(x)
        ref = q6k_tiled_ref(w, *act[:2])
        other = np.empty_like(want)
        _q6k_llama(*w.fields, *act, other, not q6k_tiled(len(x)))  # the other arithmetic
        for wrong in (other, ref) if not q6k_tiled(len(x)) else (other,):
            assert (wrong != want).any(axis=1).all()  # every column differs somewhere
        if q6k_tiled(len(x)):
            np.testing.assert_array_equal(ref.view(np.uint32), bits)


@pytest.mark.parametrize("rows", [37, 16])
def test_q6k_tiled_kernel_equals_numpy_reference(rows):
    """The tiled Q6_K kernel against its NumPy reference: one and several 16-column lane groups, a
    partial one, more than one pass of lane groups (70 columns), odd rows (37 = 2 x 16 + 5: the
    last task ends in a single row), the largest codes and an all-zero activation super-block."""
    from engine.runtime.kernels.actquant import quantize_q8_k
    from engine.runtime.kernels.qmatmul import _q6k_llama, q6k_tiled_ref

    cols = 768
    raw = _random_blocks("Q6_K", rows, cols, 4000 + rows)
    raw.reshape(rows, -1, 210)[0, 0, :192] = 0xFF  # codes 63
    w = repack(raw, IDS["Q6_K"], rows, cols)
    rng = np.random.default_rng(rows)
    for n in (1, 7, 8, 16, 17, 70):
        x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 30, (n, 1))).astype(np.float32)
        x[0, 256:512] = 0.0
        act = quantize_q8_k(x)
        got = np.full((n, rows), np.nan, np.float32)
        _q6k_llama(*w.fields, *act, got, True)
        want = q6k_tiled_ref(w, *act[:2])
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"n={n}")
        if n >= 8:  # matvec and qgemm take the tiled kernel from 8 rows on, the vec_dot below
            np.testing.assert_array_equal(matvec(w, x).view(np.uint32), want.view(np.uint32))
        else:
            assert not np.array_equal(matvec(w, x), want)
