"""The fused kernels of the one-token GPU path (engine/runtime/cuda/fused_kernels.py) against the
kernels they replace (engine/runtime/cuda/kernels.py, ops_kernels.py), which the other CUDA tests
compare with the CPU.  Same arithmetic step for step, so on the simulator the results are equal
bit for bit: every activation code type, residual mode, gate, RoPE mode, partial rotation, bias,
Q/K norm and query scale order, with several threads per block (SIM_REDUCE_LAUNCH) so that the
block reductions and strided loops run.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_cuda_backend import cuda_test_device


@pytest.fixture(scope="module")
def launch():
    with cuda_test_device() as launch:
        from engine.runtime.cuda import device as D

        yield D.SIM_REDUCE_LAUNCH if launch is D.SIM_LAUNCH else launch


def _rng_rows(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    x = (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)
    x.flat[3] *= 9.0  # an outlier, as real activations have
    return x


def _codes_args(act_type: str, act):
    """(kind, q, d, s, bs) of a fused kernel for device activations ``act`` of ``act_type``."""
    from numba import cuda

    from engine.runtime.cuda import fused_kernels as FK

    no_f, no_i = cuda.device_array((1, 1), np.float32), cuda.device_array((1, 1), np.int32)
    if act_type == "F32":
        return FK.NO_CODES, cuda.device_array((1, 1), np.int8), no_f, no_f, no_i
    s = act[2] if act_type == "Q8_1" else no_f
    bs = act[2] if act_type == "Q8_K" else no_i
    return FK.CODE_KINDS[act_type], act[0], act[1], s, bs


def _host(arrays) -> list[np.ndarray]:
    return [a.copy_to_host() for a in arrays]


@pytest.mark.parametrize("act_type", ["Q8_0", "Q8_1", "Q8_K", "F32"])
def test_residual_norm_quant_equals_norm_add_and_quantize(launch, act_type):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import fused_kernels as FK
    from engine.runtime.cuda import ops_kernels as O

    rows, n = 2, 512
    a, x0 = _rng_rows(1, (rows, n)), _rng_rows(2, (rows, n))
    w1, w2, bias = (1 + 0.1 * _rng_rows(s, n) for s in (3, 4, 5))
    eps = np.float32(1e-6)
    none = cuda.device_array(0, np.float32)
    for mode in (FK.NO_RESIDUAL, FK.ADD, FK.ADD_NORMED):
        da, dx, dw1, dw2, db = (cuda.to_device(v) for v in (a, x0, w1, w2, bias))
        # the kernels it replaces
        if mode == FK.ADD:
            ab = O.run_take_cols(launch, da, 0, n, db)
            want_x = O.run_add(launch, ab, dx)
        elif mode == FK.ADD_NORMED:
            want_x = D.rmsnorm(launch, da, dw1, eps, res=dx)
        else:
            want_x = dx
        want_h = D.rmsnorm(launch, want_x, dw2, eps)
        want = [want_x, want_h, *D.quantize(launch, act_type, want_h)[: 1 if act_type == "F32" else None]]
        want = _host(want)
        # fused
        dx = cuda.to_device(x0)
        h = cuda.device_array((rows, n), np.float32)
        act = D.act_buffers(cuda.device_array, act_type, rows, n, h)
        bias_arg = db if mode == FK.ADD else none
        FK.residual_norm_quant[rows, launch.row_threads](
            da, bias_arg, dw1, dx, dw2, eps, mode, h, *_codes_args(act_type, act)
        )
        got = _host([dx, h, *act])
        for g, wv, what in zip(got, want, ["x", "h", "q", "d", "s"][: len(got)], strict=True):
            np.testing.assert_array_equal(g, wv, err_msg=f"{act_type} mode {mode}: {what}")
        # no norm after (the last layer's hidden state): x only
        dx = cuda.to_device(x0)
        h0 = cuda.to_device(np.zeros((rows, n), np.float32))
        FK.residual_norm_quant[rows, launch.row_threads](
            da, bias_arg, dw1, dx, none, eps, mode, h0, *_codes_args("F32", None)
        )
        np.testing.assert_array_equal(dx.copy_to_host(), want[0])
        assert not h0.copy_to_host().any()


@pytest.mark.parametrize("act_type", ["Q8_0", "Q8_K", "F32"])
def test_glu_quant_equals_gating_and_quantize(launch, act_type):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import fused_kernels as FK
    from engine.runtime.cuda import ops_kernels as O

    n = 512
    gu = _rng_rows(6, 2 * n, scale=4.0)  # beyond GELU's +-10 table range too
    d = cuda.to_device(gu)
    gate, up = d[:n].reshape(1, n), d[n:].reshape(1, n)
    for kind, ref in (
        (FK.SILU, lambda: O.run_swiglu(launch, gate, up)),
        (FK.GELU, lambda: D.geglu(launch, gate, up, fp16_table=False)),
        (FK.GELU_F16, lambda: D.geglu(launch, gate, up, fp16_table=True)),
    ):
        f = ref()
        want = _host([f, *D.quantize(launch, act_type, f)[: 1 if act_type == "F32" else None]])
        out = cuda.device_array((1, n), np.float32)
        act = D.act_buffers(cuda.device_array, act_type, 1, n, out)
        # up first, gate second in the flat buffer: the offsets are honoured
        flat = cuda.to_device(np.concatenate([gu[n:], gu[:n]]))
        FK.glu_quant[2, launch.elem_threads](flat, n, 0, kind, out, *_codes_args(act_type, act))
        for g, wv in zip(_host([out, *act]), want, strict=True):
            np.testing.assert_array_equal(g, wv, err_msg=f"{act_type} gate {kind}")


def test_gemma_qk_rope_kv_equals_norm_rope_and_cache_write(launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import fused_kernels as FK
    from engine.runtime.cuda import kernels as K

    nh, nkv, hd, slots, pos = 4, 2, 32, 4, 9  # pos 9 goes to slot 1 of the ring
    q, k, v = _rng_rows(7, (1, nh * hd)), _rng_rows(8, (1, nkv * hd)), _rng_rows(9, (1, nkv * hd))
    qn, kn = 1 + 0.1 * _rng_rows(10, hd), 1 + 0.1 * _rng_rows(11, hd)
    eps, base, fscale, qscale = np.float32(1e-6), 10000.0, 0.25, 0.125
    for round_f16 in (True, False):
        # the kernels it replaces
        dq = D.rmsnorm(launch, cuda.to_device(q.reshape(nh, hd)), cuda.to_device(qn), eps).reshape(1, nh, hd)
        dk = D.rmsnorm(launch, cuda.to_device(k.reshape(nkv, hd)), cuda.to_device(kn), eps).reshape(
            1, nkv, hd
        )
        dpos = cuda.to_device(np.array([pos], np.int64))
        D.rope(launch, dq, dpos, base, fscale, scale=qscale, round_f16=round_f16)
        D.rope(launch, dk, dpos, base, fscale)
        kc, vc = (cuda.to_device(np.zeros((slots, nkv, hd), np.uint16)) for _ in range(2))
        sp = cuda.to_device(np.full(slots, -1, np.int64))
        K.kv_write[1, launch.elem_threads](dk, cuda.to_device(v.reshape(1, nkv, hd)), kc, vc, sp, pos)
        want = _host([dq, kc, vc, sp])
        # fused, from a q ‖ v ‖ k layout
        qkv = cuda.to_device(np.concatenate([q[0], v[0], k[0]]))
        q_out = cuda.device_array((1, nh, hd), np.float32)
        kc, vc = (cuda.to_device(np.zeros((slots, nkv, hd), np.uint16)) for _ in range(2))
        sp = cuda.to_device(np.full(slots, -1, np.int64))
        qpos = cuda.to_device(np.array([pos], np.int64))  # the token's position, read on the device
        ts = D._theta_scale(np.float32(base), hd)
        FK.gemma_qk_rope_kv[3, launch.row_threads](
            qkv,
            0,
            nh * hd + nkv * hd,
            nh * hd,
            cuda.to_device(qn),
            cuda.to_device(kn),
            eps,
            ts,
            np.float64(fscale),
            np.float32(qscale),
            round_f16,
            q_out,
            kc,
            vc,
            sp,
            qpos,
        )
        for g, wv, what in zip(_host([q_out, kc, vc, sp]), want, ["q", "k", "v", "slots"], strict=True):
            np.testing.assert_array_equal(g, wv, err_msg=f"{what} round {round_f16}")
        assert want[3][1] == pos


@pytest.mark.parametrize(
    ("n_rot", "neox", "bias", "norm"), [(32, True, True, False), (16, False, False, True)]
)
def test_ext_qk_rope_kv_equals_bias_norm_rope_scale_and_cache_write(launch, n_rot, neox, bias, norm):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import fused_kernels as FK
    from engine.runtime.cuda import kernels as K
    from engine.runtime.cuda import ops_kernels as O

    nh, nkv, hd, slots, pos = 4, 2, 32, 16, 5
    nq, nk = nh * hd, nkv * hd
    qkv = _rng_rows(12, nq + 2 * nk)
    b = 0.5 * _rng_rows(13, nq + 2 * nk)
    qn, kn = 1 + 0.1 * _rng_rows(14, hd), 1 + 0.1 * _rng_rows(15, hd)
    ff = np.geomspace(1.0, 8.0, n_rot // 2).astype(np.float32)
    eps, base, fscale, mscale, qscale = np.float32(1e-6), 500000.0, 0.5, 1.19, 1 / np.sqrt(96.0)
    none = cuda.device_array(0, np.float32)
    for scale_first in (True, False):
        # the kernels it replaces
        d = cuda.to_device(qkv.reshape(1, -1))
        db = cuda.to_device(b)
        parts = [
            O.run_take_cols(launch, d, c0, w, db[c0 : c0 + w] if bias else None)
            for c0, w in ((0, nq), (nq, nk), (nq + nk, nk))
        ]
        q, k, v = parts
        if norm:
            q = D.rmsnorm(launch, q.reshape(nh, hd), cuda.to_device(qn), eps)
            k = D.rmsnorm(launch, k.reshape(nkv, hd), cuda.to_device(kn), eps)
        q, k, v = q.reshape(1, nh, hd), k.reshape(1, nkv, hd), v.reshape(1, nkv, hd)
        dpos, dff = cuda.to_device(np.array([pos], np.int64)), cuda.to_device(ff)
        for x in (q, k):
            O.run_rope(launch, x, dpos, n_rot, base, fscale, dff, mscale, neox)
        O.run_scale_round(launch, q.reshape(1, nq), qscale, scale_first, True)
        kc, vc = (cuda.to_device(np.zeros((slots, nkv, hd), np.uint16)) for _ in range(2))
        sp = cuda.to_device(np.full(slots, -1, np.int64))
        K.kv_write[1, launch.elem_threads](k, v, kc, vc, sp, pos)
        want = _host([q, kc, vc, sp])
        # fused
        q_out = cuda.device_array((1, nh, hd), np.float32)
        kc, vc = (cuda.to_device(np.zeros((slots, nkv, hd), np.uint16)) for _ in range(2))
        sp = cuda.to_device(np.full(slots, -1, np.int64))
        qpos = cuda.to_device(np.array([pos], np.int64))
        norms = (cuda.to_device(qn), cuda.to_device(kn)) if norm else (none, none)
        ts = D._theta_scale(np.float32(base), n_rot)
        FK.ext_qk_rope_kv[3, launch.row_threads](
            cuda.to_device(qkv),
            0,
            nq,
            nq + nk,
            db if bias else none,
            *norms,
            eps,
            n_rot,
            ts,
            np.float32(fscale),
            dff,
            np.float32(mscale),
            neox,
            np.float32(qscale),
            scale_first,
            q_out,
            kc,
            vc,
            sp,
            qpos,
        )
        for g, wv, what in zip(_host([q_out, kc, vc, sp]), want, ["q", "k", "v", "slots"], strict=True):
            np.testing.assert_array_equal(g, wv, err_msg=f"{what} scale first {scale_first}")
        assert want[3][pos % slots] == pos


@pytest.mark.parametrize("pos", [2, 9])
def test_attention_reads_the_filled_slots_from_the_token_position(launch, pos):
    """ns = -1 (what the one-token programs pass, so that a CUDA graph serves every token): the
    kernels take min(slots, qpos[0] + 1) slots, the count the host passed before."""
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import fused_kernels as FK
    from engine.runtime.cuda import kernels as K

    nh, nkv, hd, slots = 2, 1, 32, 6
    rng = np.random.default_rng(pos)
    q = cuda.to_device(_rng_rows(3, (1, nh, hd)))
    kc, vc = (
        cuda.to_device(rng.standard_normal((slots, nkv, hd)).astype(np.float16).view(np.uint16)) for _ in "kv"
    )
    # ring of 6 at position `pos`: slots past pos hold -1 (unfilled) or positions of the ring's past
    sp_host = np.array([p if p <= pos else -1 for p in range(slots)], np.int64)
    if pos >= slots:
        sp_host = np.array([pos - ((pos - s) % slots) for s in range(slots)], np.int64)
    sp, qpos = cuda.to_device(sp_host), cuda.to_device(np.array([pos], np.int64))
    outs = []
    for ns in (min(slots, pos + 1), -1):
        for kernel in (K.attention, FK.attention_quant):
            out = cuda.device_array((1, nh, hd), np.float32)
            scores = cuda.to_device(np.full((nh, slots), np.nan, np.float32))
            args = (q, kc, vc, sp, ns, qpos, 0, True, scores, out)
            if kernel is K.attention:
                kernel[nh, launch.row_threads](*args)
            else:
                flat = out.reshape(1, nh * hd)
                act = D.act_buffers(cuda.device_array, "Q8_0", 1, nh * hd, flat)
                kernel[nh, launch.row_threads](*args, flat, *_codes_args("Q8_0", act))
            outs.append(out.copy_to_host())
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert np.abs(outs[0]).max() > 0


@pytest.mark.parametrize(("act_type", "hd"), [("Q8_0", 64), ("Q8_1", 32), ("Q8_K", 256)])
def test_attention_quant_equals_attention_and_quantize(launch, act_type, hd):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import fused_kernels as FK
    from engine.runtime.cuda import kernels as K

    nh, nkv, slots, pos, window = 4, 2, 6, 7, 5
    rng = np.random.default_rng(16)
    q = cuda.to_device(_rng_rows(17, (1, nh, hd)))
    kc, vc = (
        cuda.to_device(rng.standard_normal((slots, nkv, hd)).astype(np.float16).view(np.uint16)) for _ in "kv"
    )
    sp = cuda.to_device(np.array([6, 7, 2, 3, -1, 5], np.int64))  # slot 2 is outside the window
    qpos = cuda.to_device(np.array([pos], np.int64))
    args = (q, kc, vc, sp, slots, qpos, window, True, cuda.device_array((nh, slots), np.float32))
    out = cuda.device_array((1, nh, hd), np.float32)
    K.attention[nh, launch.row_threads](*args, out)
    want = _host(D.quantize(launch, act_type, out.reshape(1, nh * hd)))
    out = cuda.device_array((1, nh, hd), np.float32)
    flat = out.reshape(1, nh * hd)
    act = D.act_buffers(cuda.device_array, act_type, 1, nh * hd, flat)
    FK.attention_quant[2, launch.row_threads](*args, out, flat, *_codes_args(act_type, act))
    for g, wv in zip(_host(act), want, strict=True):
        np.testing.assert_array_equal(g, wv, err_msg=act_type)
    assert np.abs(want[0].astype(np.int32)).max() == 127  # not all zeros
