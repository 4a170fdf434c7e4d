"""Mat-vec and dequantize kernels for the weight types beyond the original fast paths.

Covers F32, F16, BF16, Q4_1, Q5_1, IQ4_NL, MXFP4 (32-element blocks or plain floats) and Q2_K,
Q3_K, IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0 (256-element
super-blocks).  :mod:`.qmatmul` repacks the GGUF blocks into the per-field arrays these kernels
take and dispatches to them.

The mat-vec kernels take the activations as llama.cpp's ``vec_dot_type`` (Q8_0 / Q8_1 / Q8_K codes, or
f32 holding F16 / BF16 values) and sum each block exactly in integers, scaled as llama.cpp's
``ggml_vec_dot_*_generic`` scales it.  Q4_1, Q5_1, Q2_K, Q3_K, TQ1_0 and TQ2_0 decode their codes
inside the integer dot (see "fused mat-vec kernels" for what makes LLVM vectorize them).  IQ4_NL,
IQ4_XS and MXFP4 look their codes up 16 at a time (pshufb, :func:`_lut16`) into a scratch row; the
grid types (IQ1_*, IQ2_*, IQ3_*) unpack eight codes per uint64 store into one int8 code per element
plus one integer scale per 16 elements (``ls``); both then dot, once per row, so a batch of
activation rows reuses the unpacked row.  Float weights (F32 / F16 / BF16) are converted in
registers and summed in f32 vector lanes.  Where llama.cpp adds a float term the codes
fold it in exactly:

- IQ1_S / IQ1_M: ``sumi + 0.125·sumi_delta`` equals ``Σ ls·(8·grid ± 1)·q8 / 8`` exactly (all
  magnitudes < 2^24), so the codes are ``8·grid ± 1`` and the block scale carries the 1/8;
- IQ2_* (×0.125) and IQ3_XXS (×0.25): the power-of-two factor llama.cpp applies at the end is
  folded into the f32 block scale at repack (exact).

Dequantization uses the same codes and scales; every product there is exact in f32 (or follows
the C expression order where it is not: Q2_K, Q4_1, Q5_1), so rows equal gguf-py's bit for bit.

Every kernel follows :data:`engine.runtime.kernels._config.KERNEL` (cached, GIL released, no
fastmath; the float mat-vecs add only ``reassoc``, see :data:`_FDOT`) and runs in parallel over
rows or chunks of rows, with any scratch buffers hoisted per chunk.
"""

from __future__ import annotations

import functools
import platform

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from engine.runtime.kernels._config import KERNEL

CH = 64  # rows per parallel chunk
_INL = {"cache": True, "nogil": True}
_INLINE = {**_INL, "inline": "always"}  # helpers whose loops must vectorize in the caller's body
# Float-weight dot products: ``reassoc`` only lets LLVM split the f32 sum into vector lanes (Numba
# leaves the SLP vectorizer off, so without it a float reduction stays scalar); no other fast-math
# flag, so every product and sum is still rounded as written.  Tests bound the order's effect.
_FDOT = {**KERNEL, "parallel": True, "fastmath": {"reassoc"}}


@intrinsic
def _as_f32(typingctx, v):
    """The float32 whose bits are the low 32 bits of the integer ``v`` (a register bitcast,
    vectorizable)."""
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_i32(builder, args[0]), ir.FloatType())

    return types.float32(v), codegen


def _i32(builder, a):
    w = a.type.width
    return a if w == 32 else builder.trunc(a, ir.IntType(32)) if w > 32 else builder.zext(a, ir.IntType(32))


KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)


def _host_features() -> str:
    try:
        return llvm_binding.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot tell on this host: take the portable paths
        return ""


_MACHINE = platform.machine().lower()
_X86 = _MACHINE in ("x86_64", "amd64")
# x86 with SSSE3: 16-entry byte tables are looked up with pshufb, 16 lanes per instruction
_PSHUFB = _X86 and "+ssse3" in _host_features()


def _lut_codegen(pshufb: bool):
    def codegen(context, builder, signature, args):
        src, so, kv, dst, do = args
        i8 = ir.IntType(8)
        v16 = ir.VectorType(i8, 16)

        def vptr(ty, arr, off):
            a = context.make_array(ty)(context, builder, arr)
            return builder.bitcast(
                builder.gep(builder.bitcast(a.data, i8.as_pointer()), [off]), v16.as_pointer()
            )

        q = builder.load(vptr(signature.args[0], src, so), align=1)
        tbl = builder.load(vptr(signature.args[2], kv, ir.Constant(ir.IntType(64), 0)), align=1)
        lo = builder.and_(q, ir.Constant(v16, [15] * 16))
        hi = builder.lshr(q, ir.Constant(v16, [4] * 16))
        if pshufb:
            name = "llvm.x86.ssse3.pshuf.b.128"
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(v16, [v16, v16]), name
            )
            a = builder.call(fn, [tbl, lo])
            b = builder.call(fn, [tbl, hi])
        else:
            a = b = ir.Constant(v16, None)
            for j in range(16):
                jj = ir.Constant(ir.IntType(32), j)
                a = builder.insert_element(
                    a, builder.extract_element(tbl, builder.extract_element(lo, jj)), jj
                )
                b = builder.insert_element(
                    b, builder.extract_element(tbl, builder.extract_element(hi, jj)), jj
                )
        builder.store(a, vptr(signature.args[3], dst, do), align=1)
        builder.store(b, vptr(signature.args[3], dst, builder.add(do, ir.Constant(do.type, 16))), align=1)
        return context.get_dummy_value()

    return codegen


def _lut_typer(pshufb: bool):
    def typer(typingctx, src, so, kv, dst, do):
        """dst[do + j] = kv[src[so + j] & 15] and dst[do + 16 + j] = kv[src[so + j] >> 4] for j < 16
        (one 32-element block of 4-bit table indices; kv: the 16-byte table; no bounds checks)."""
        if not (isinstance(so, types.Integer) and isinstance(do, types.Integer)):
            return None
        return types.void(src, so, kv, dst, do), _lut_codegen(pshufb)

    return typer


_lut16_pshufb = intrinsic(_lut_typer(True))
_lut16_generic = intrinsic(_lut_typer(False))  # lane by lane (any CPU; tested against NumPy)
_lut16 = _lut16_pshufb if _PSHUFB else _lut16_generic


@functools.cache
def tables() -> dict[str, np.ndarray]:
    """Grid tables (int8, ggml-common.h values) and the sign table ``sign8[byte, j] = ±1``."""
    from engine.quant.iq_tables import dequant_grid, ksigns

    t = {
        name: np.ascontiguousarray(dequant_grid(src).astype(np.int8))
        for name, src in (
            ("iq2xxs", "KGRID_2BIT_256"),
            ("iq2xs", "KGRID_2BIT_512"),
            ("iq2s", "KGRID_2BIT_1024"),
            ("iq1s", "KGRID_1BIT_2048"),
            ("iq3xxs", "KGRID_256"),
            ("iq3s", "KGRID_512"),
        )
    }
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    t["sign8"] = np.ascontiguousarray((1 - 2 * bits).astype(np.int8))
    t["ksigns"] = np.ascontiguousarray(ksigns().astype(np.int32))
    for a in t.values():
        a.setflags(write=False)
    return t


# ============================================================================ shared dot products


@njit(**_INLINE)
def _dot_q8k(q, ls, d, r, xq, xd, t, lane):
    """Σ_blocks (d[r,b]·xd[t,b]) · Σ_groups ls[g] · Σ_16 q·xq, integer inside a super-block.
    Four 16-element groups per pass with scalar int32 accumulators, every block indexed through
    1-D slices: LLVM vectorizes that into pmaddwd lanes (an accumulator array, one group at a
    time, or 2-D indexing with possibly negative indices runs several times slower)."""
    nb = d.shape[1]
    acc = np.float32(0.0)
    for b in range(nb):
        sumi = np.int32(0)
        for g in range(0, 16, 4):
            o = b * 256 + g * 16
            qg = q[o : o + 64]
            xg = xq[t, o : o + 64]
            lg = ls[b * 16 + g : b * 16 + g + 4]
            s1 = np.int32(0)
            s2 = np.int32(0)
            s3 = np.int32(0)
            s4 = np.int32(0)
            for j in range(16):
                s1 = np.int32(s1 + np.int32(qg[j]) * np.int32(xg[j]))
                s2 = np.int32(s2 + np.int32(qg[16 + j]) * np.int32(xg[16 + j]))
                s3 = np.int32(s3 + np.int32(qg[32 + j]) * np.int32(xg[32 + j]))
                s4 = np.int32(s4 + np.int32(qg[48 + j]) * np.int32(xg[48 + j]))
            sumi = np.int32(sumi + lg[0] * s1 + lg[1] * s2 + lg[2] * s3 + lg[3] * s4)
        acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
    return acc


@njit(**_INL)
def _dq_codes(q, ls, d, r, out, i):
    """out[i] = d[r, b] · ls[g] · q (exact in f32 for every type that uses it)."""
    nb = d.shape[1]
    for b in range(nb):
        for g in range(16):
            s = d[r, b] * np.float32(ls[b * 16 + g])
            o = b * 256 + g * 16
            for j in range(16):
                out[i, o + j] = s * np.float32(q[o + j])


@njit(**_INL)
def _dq_codes32(q, d, r, out, i):
    nb = d.shape[1]
    for b in range(nb):
        s = d[r, b]
        for j in range(32):
            out[i, b * 32 + j] = s * np.float32(q[b * 32 + j])


# ============================================================================ unpack: 32-element blocks


@njit(**_INL)
def _u_q5_1(qs, qh, r, q):
    nb = q.shape[0] // 32
    for b in range(nb):
        h = qh[r, b]
        for j in range(16):
            v = qs[r, b * 16 + j]
            q[b * 32 + j] = (v & 15) | (((h >> j) & 1) << 4)
            q[b * 32 + 16 + j] = (v >> 4) | (((h >> (j + 16)) & 1) << 4)


@njit(**_INL)
def _u_lut4(qs, kv, r, q):
    """4-bit indices into a 16-entry table (IQ4_NL, MXFP4): low nibble j, high nibble j + 16."""
    nb = q.shape[0] // 32
    for b in range(nb):
        for j in range(16):
            v = qs[r, b * 16 + j]
            q[b * 32 + j] = kv[v & 15]
            q[b * 32 + 16 + j] = kv[v >> 4]


# ============================================================================ unpack: super-blocks


@njit(**_INL)
def _u_q2_k(qs, sc, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for h in range(2):
            for s in range(4):
                o = b * 256 + 128 * h + 32 * s
                for li in range(32):
                    q[o + li] = (qs[r, b * 64 + 32 * h + li] >> (2 * s)) & 3
        for g in range(16):
            ls[b * 16 + g] = sc[r, b * 16 + g]


@njit(**_INL)
def _u_q3_k(qs, hm, sc, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for h in range(2):
            for s in range(4):
                o = b * 256 + 128 * h + 32 * s
                bit = 1 << (4 * h + s)
                for li in range(32):
                    v = np.int32((qs[r, b * 64 + 32 * h + li] >> (2 * s)) & 3)
                    if not (hm[r, b * 32 + li] & bit):
                        v -= 4
                    q[o + li] = v
        for g in range(16):
            ls[b * 16 + g] = sc[r, b * 16 + g]


@njit(**_INL)
def _u_iq4_xs(qs, sc, kv, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            o = b * 256 + 32 * ib
            for j in range(16):
                v = qs[r, b * 128 + 16 * ib + j]
                q[o + j] = kv[v & 15]
                q[o + 16 + j] = kv[v >> 4]
            ls[b * 16 + 2 * ib] = sc[r, b * 8 + ib]
            ls[b * 16 + 2 * ib + 1] = sc[r, b * 8 + ib]


@njit(**_INL)
def _u_tq1_0(qs, qh, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        o = b * 256
        for p in range(5):
            pw = np.uint8(3**p)
            for m in range(32):
                v = np.uint8(qs[r, b * 48 + m] * pw)
                q[o + 32 * p + m] = ((np.int32(v) * 3) >> 8) - 1
            for m in range(16):
                v = np.uint8(qs[r, b * 48 + 32 + m] * pw)
                q[o + 160 + 16 * p + m] = ((np.int32(v) * 3) >> 8) - 1
        for p in range(4):
            pw = np.uint8(3**p)
            for j in range(4):
                v = np.uint8(qh[r, b * 4 + j] * pw)
                q[o + 240 + 4 * p + j] = ((np.int32(v) * 3) >> 8) - 1
        for g in range(16):
            ls[b * 16 + g] = 1


@njit(**_INL)
def _u_tq2_0(qs, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for h in range(2):
            for s in range(4):
                o = b * 256 + 128 * h + 32 * s
                for k in range(32):
                    q[o + k] = np.int32((qs[r, b * 64 + 32 * h + k] >> (2 * s)) & 3) - 1
        for g in range(16):
            ls[b * 16 + g] = 1


# Grid types: eight codes at a time as one uint64 (SWAR).  The grid row (8 bytes, or two 4-byte
# rows for the IQ3 types) is read as an integer and negated bytewise where the sign mask byte is
# 0xFF: (g ^ 0xFF) + 1 = -g per byte, with no carry between bytes because no grid value is 0.
_LOW1 = np.uint64(0x0101010101010101)


@njit(**_INL)
def _sign_masks(sign8):
    """uint64 masks m[s]: byte j is 0xFF where sign pattern s negates element j, else 0."""
    s64 = sign8.view(np.uint64)
    m = np.empty(256, np.uint64)
    for i in range(256):
        t = (s64[i, 0] >> np.uint64(1)) & np.uint64(0x7F7F7F7F7F7F7F7F)  # 0x7F where the byte is 0xFF
        m[i] = t | (t << np.uint64(1))
    return m


@njit(**_INLINE)
def _neg(g, m):
    return (g ^ m) + (m & _LOW1)


@njit(**_INLINE)
def _u_iq2_xxs(gi, ss, grid, sign8, ksg, r, q, ls, m64):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    g64 = grid.view(np.uint64)
    for b in range(nb):
        for ib in range(8):
            a = ss[r, b * 8 + ib]
            s = np.int32(2 * (a >> 28) + 1)
            for lq in range(4):
                k = b * 32 + 4 * ib + lq
                q64[k] = _neg(g64[gi[r, k], 0], m64[ksg[(a >> (7 * lq)) & 127]])
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INLINE)
def _u_iq2_xs(qs, sc, grid, sign8, ksg, r, q, ls, m64):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    g64 = grid.view(np.uint64)
    for b in range(nb):
        for ib in range(8):
            for lq in range(4):
                k = b * 32 + 4 * ib + lq
                v = qs[r, k]
                q64[k] = _neg(g64[v & 511, 0], m64[ksg[v >> 9]])
            s = sc[r, b * 8 + ib]
            ls[b * 16 + 2 * ib] = 2 * np.int32(s & 15) + 1
            ls[b * 16 + 2 * ib + 1] = 2 * np.int32(s >> 4) + 1


@njit(**_INLINE)
def _u_iq2_s(qs, sg, qh, sc, grid, sign8, r, q, ls, m64):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    g64 = grid.view(np.uint64)
    for b in range(nb):
        for ib in range(8):
            h = np.int32(qh[r, b * 8 + ib])
            for lq in range(4):
                k = b * 32 + 4 * ib + lq
                gi = np.int32(qs[r, k]) | ((h << (8 - 2 * lq)) & 0x300)
                q64[k] = _neg(g64[gi, 0], m64[sg[r, k]])
            s = sc[r, b * 8 + ib]
            ls[b * 16 + 2 * ib] = 2 * np.int32(s & 15) + 1
            ls[b * 16 + 2 * ib + 1] = 2 * np.int32(s >> 4) + 1


@njit(**_INLINE)
def _g4x2(g32, g1, g2):
    """Two 4-byte grid rows as one uint64 (g1 in the low bytes)."""
    return np.uint64(g32[g1, 0]) | (np.uint64(g32[g2, 0]) << np.uint64(32))


@njit(**_INLINE)
def _u_iq3_xxs(q3, ss, grid, sign8, ksg, r, q, ls, m64):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    g32 = grid.view(np.uint32)
    for b in range(nb):
        for ib in range(8):
            a = ss[r, b * 8 + ib]
            s = np.int32(2 * (a >> 28) + 1)
            for lq in range(4):
                o = b * 64 + 8 * ib + 2 * lq
                g = _g4x2(g32, q3[r, o], q3[r, o + 1])
                q64[b * 32 + 4 * ib + lq] = _neg(g, m64[ksg[(a >> (7 * lq)) & 127]])
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INLINE)
def _u_iq3_s(qs, qh, sg, sc, grid, sign8, r, q, ls, m64):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    g32 = grid.view(np.uint32)
    for b in range(nb):
        for ib in range(8):
            h = np.int32(qh[r, b * 8 + ib])
            for lq in range(4):
                o = b * 64 + 8 * ib + 2 * lq
                g1 = np.int32(qs[r, o]) | ((h << (8 - 2 * lq)) & 256)
                g2 = np.int32(qs[r, o + 1]) | ((h << (7 - 2 * lq)) & 256)
                k = b * 32 + 4 * ib + lq
                q64[k] = _neg(_g4x2(g32, g1, g2), m64[sg[r, k]])
            s = 2 * np.int32((sc[r, b * 4 + ib // 2] >> (4 * (ib % 2))) & 15) + 1
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INL)
def _iq1_rows(grid):
    """IQ1 codes 8·grid ± 1 of every grid row as uint64: [0] with delta +1, [1] with delta -1."""
    n = grid.shape[0]
    c = np.empty((2, n, 8), np.int8)
    for i in range(n):
        for j in range(8):
            c[0, i, j] = 8 * grid[i, j] + 1
            c[1, i, j] = 8 * grid[i, j] - 1
    return c.reshape(2, n * 8).view(np.uint64)


@njit(**_INLINE)
def _u_iq1_s(qs, qh, grid, r, q, ls, g2):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    for b in range(nb):
        for ib in range(8):
            h = np.int32(qh[r, b * 8 + ib])
            neg = 1 if h & 0x8000 else 0
            for lq in range(4):
                k = b * 32 + 4 * ib + lq
                q64[k] = g2[neg, np.int32(qs[r, k]) | (((h >> (3 * lq)) & 7) << 8)]
            s = 2 * ((h >> 12) & 7) + 1
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INLINE)
def _u_iq1_m(qs, qh, sc, grid, r, q, ls, g2):
    nb = q.shape[0] // 256
    q64 = q.view(np.uint64)
    for b in range(nb):
        for ib in range(8):
            for lq in range(4):
                h = np.int32(qh[r, b * 16 + 2 * ib + lq // 2])
                k = b * 32 + 4 * ib + lq
                gi = np.int32(qs[r, k]) | ((h << (8 - 4 * (lq % 2))) & 0x700)
                neg = 1 if h & (0x08 << (4 * (lq % 2))) else 0
                q64[k] = g2[neg, gi]
            s = np.int32(sc[r, b * 4 + ib // 2])
            ls[b * 16 + 2 * ib] = 2 * ((s >> (6 * (ib % 2))) & 7) + 1
            ls[b * 16 + 2 * ib + 1] = 2 * ((s >> (6 * (ib % 2) + 3)) & 7) + 1


# ============================================================================ mat-vec drivers
# One small driver per type: Numba cannot cache kernels that take other kernels as arguments.


@njit(**KERNEL, parallel=True)
def mv_iq2_xxs(gi, ss, d, grid, sign8, ksg, xq, xd, out):
    rows, nb = d.shape
    m64 = _sign_masks(sign8)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq2_xxs(gi, ss, grid, sign8, ksg, r, q, ls, m64)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq2_xs(qs, sc, d, grid, sign8, ksg, xq, xd, out):
    rows, nb = d.shape
    m64 = _sign_masks(sign8)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq2_xs(qs, sc, grid, sign8, ksg, r, q, ls, m64)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq2_s(qs, sg, qh, sc, d, grid, sign8, xq, xd, out):
    rows, nb = d.shape
    m64 = _sign_masks(sign8)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq2_s(qs, sg, qh, sc, grid, sign8, r, q, ls, m64)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq3_xxs(q3, ss, d, grid, sign8, ksg, xq, xd, out):
    rows, nb = d.shape
    m64 = _sign_masks(sign8)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq3_xxs(q3, ss, grid, sign8, ksg, r, q, ls, m64)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq3_s(qs, qh, sg, sc, d, grid, sign8, xq, xd, out):
    rows, nb = d.shape
    m64 = _sign_masks(sign8)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq3_s(qs, qh, sg, sc, grid, sign8, r, q, ls, m64)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq1_s(qs, qh, d, grid, xq, xd, out):
    rows, nb = d.shape
    g2 = _iq1_rows(grid)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq1_s(qs, qh, grid, r, q, ls, g2)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq1_m(qs, qh, sc, d, grid, xq, xd, out):
    rows, nb = d.shape
    g2 = _iq1_rows(grid)
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq1_m(qs, qh, sc, grid, r, q, ls, g2)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


# ============================================================================ fused mat-vec kernels
# The codes are decoded inside the integer dot (no scratch row).  What makes LLVM vectorize these
# (pmaddwd / vpdpwssd lanes) rather than emulate gathers: every block is indexed through a 1-D slice
# (indices from range() are then provably non-negative: no wraparound selects), the inner loop runs
# over 16 elements with four or more scalar int32 accumulators, all in the kernel's own body.
# Integer sums are exact and the f32 block terms are added in the order the unpacking kernels used,
# so results are bit-identical to them.


@njit(**_INLINE)
def _q3k_h0(q, hv, x):
    """Eight 16-element integer sums of one Q3_K half super-block, codes + 4 (unsigned): q 32 bytes
    of 2-bit codes, hv the 32 hmask bytes (bits 0..3 belong to this half), x its 128
    activations.  Each code is an explicit int32 sum of its two fields: that is what keeps LLVM's
    lanes 32-bit (pmaddwd) here."""
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    s4 = np.int32(0)
    s5 = np.int32(0)
    s6 = np.int32(0)
    s7 = np.int32(0)
    for m in range(16):
        a0 = np.int32(q[m])
        a1 = np.int32(q[16 + m])
        h0 = np.int32(hv[m])
        h1 = np.int32(hv[16 + m])
        c0 = np.int32(a0 & 3) + np.int32((h0 << 2) & 4)
        c1 = np.int32(a1 & 3) + np.int32((h1 << 2) & 4)
        c2 = np.int32((a0 >> 2) & 3) + np.int32((h0 << 1) & 4)
        c3 = np.int32((a1 >> 2) & 3) + np.int32((h1 << 1) & 4)
        c4 = np.int32((a0 >> 4) & 3) + np.int32(h0 & 4)
        c5 = np.int32((a1 >> 4) & 3) + np.int32(h1 & 4)
        c6 = np.int32((a0 >> 6) & 3) + np.int32((h0 >> 1) & 4)
        c7 = np.int32((a1 >> 6) & 3) + np.int32((h1 >> 1) & 4)
        s0 = np.int32(s0 + np.int32(c0) * np.int32(x[m]))
        s1 = np.int32(s1 + np.int32(c1) * np.int32(x[16 + m]))
        s2 = np.int32(s2 + np.int32(c2) * np.int32(x[32 + m]))
        s3 = np.int32(s3 + np.int32(c3) * np.int32(x[48 + m]))
        s4 = np.int32(s4 + np.int32(c4) * np.int32(x[64 + m]))
        s5 = np.int32(s5 + np.int32(c5) * np.int32(x[80 + m]))
        s6 = np.int32(s6 + np.int32(c6) * np.int32(x[96 + m]))
        s7 = np.int32(s7 + np.int32(c7) * np.int32(x[112 + m]))
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(**_INLINE)
def _q3k_h1(q, hv, x):
    """Eight 16-element integer sums of one Q3_K half super-block, codes + 4 (unsigned): q 32 bytes
    of 2-bit codes, hv the 32 hmask bytes (bits 4..7 belong to this half), x its 128
    activations.  Each code is an explicit int32 sum of its two fields: that is what keeps LLVM's
    lanes 32-bit (pmaddwd) here."""
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    s4 = np.int32(0)
    s5 = np.int32(0)
    s6 = np.int32(0)
    s7 = np.int32(0)
    for m in range(16):
        a0 = np.int32(q[m])
        a1 = np.int32(q[16 + m])
        h0 = np.int32(hv[m])
        h1 = np.int32(hv[16 + m])
        c0 = np.int32(a0 & 3) + np.int32((h0 >> 2) & 4)
        c1 = np.int32(a1 & 3) + np.int32((h1 >> 2) & 4)
        c2 = np.int32((a0 >> 2) & 3) + np.int32((h0 >> 3) & 4)
        c3 = np.int32((a1 >> 2) & 3) + np.int32((h1 >> 3) & 4)
        c4 = np.int32((a0 >> 4) & 3) + np.int32((h0 >> 4) & 4)
        c5 = np.int32((a1 >> 4) & 3) + np.int32((h1 >> 4) & 4)
        c6 = np.int32((a0 >> 6) & 3) + np.int32((h0 >> 5) & 4)
        c7 = np.int32((a1 >> 6) & 3) + np.int32((h1 >> 5) & 4)
        s0 = np.int32(s0 + np.int32(c0) * np.int32(x[m]))
        s1 = np.int32(s1 + np.int32(c1) * np.int32(x[16 + m]))
        s2 = np.int32(s2 + np.int32(c2) * np.int32(x[32 + m]))
        s3 = np.int32(s3 + np.int32(c3) * np.int32(x[48 + m]))
        s4 = np.int32(s4 + np.int32(c4) * np.int32(x[64 + m]))
        s5 = np.int32(s5 + np.int32(c5) * np.int32(x[80 + m]))
        s6 = np.int32(s6 + np.int32(c6) * np.int32(x[96 + m]))
        s7 = np.int32(s7 + np.int32(c7) * np.int32(x[112 + m]))
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(**_INLINE)
def _q2k_h(q, x, off):
    """Eight 16-element integer sums of (2-bit code - off)·x over one half super-block."""
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    s4 = np.int32(0)
    s5 = np.int32(0)
    s6 = np.int32(0)
    s7 = np.int32(0)
    for m in range(16):
        a0 = np.int32(q[m])
        a1 = np.int32(q[16 + m])
        s0 = np.int32(s0 + np.int32((a0 & 3) - off) * np.int32(x[m]))
        s1 = np.int32(s1 + np.int32((a1 & 3) - off) * np.int32(x[16 + m]))
        s2 = np.int32(s2 + np.int32(((a0 >> 2) & 3) - off) * np.int32(x[32 + m]))
        s3 = np.int32(s3 + np.int32(((a1 >> 2) & 3) - off) * np.int32(x[48 + m]))
        s4 = np.int32(s4 + np.int32(((a0 >> 4) & 3) - off) * np.int32(x[64 + m]))
        s5 = np.int32(s5 + np.int32(((a1 >> 4) & 3) - off) * np.int32(x[80 + m]))
        s6 = np.int32(s6 + np.int32(((a0 >> 6) & 3) - off) * np.int32(x[96 + m]))
        s7 = np.int32(s7 + np.int32(((a1 >> 6) & 3) - off) * np.int32(x[112 + m]))
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(**_INLINE)
def _scaled8(sc, s):
    """Σ_i sc[i] · s[i] over eight group sums (sc: 8 scales)."""
    return np.int32(
        np.int32(sc[0]) * s[0]
        + np.int32(sc[1]) * s[1]
        + np.int32(sc[2]) * s[2]
        + np.int32(sc[3]) * s[3]
        + np.int32(sc[4]) * s[4]
        + np.int32(sc[5]) * s[5]
        + np.int32(sc[6]) * s[6]
        + np.int32(sc[7]) * s[7]
    )


@njit(**KERNEL, parallel=True)
def mv_q3_k(qs, hm, sc, d, xq, xd, out):
    rows, nb = d.shape
    # codes are decoded as q + 4 (unsigned, keeps LLVM's lanes 32-bit); Σ q·x = Σ (q+4)·x - 4·Σ x
    xs = _sums16(xq)
    for r in prange(rows):
        for t in range(xq.shape[0]):
            acc = np.float32(0.0)
            for b in range(nb):
                hv = hm[r, b * 32 : b * 32 + 32]
                q = qs[r, b * 64 : b * 64 + 64]
                x = xq[t, b * 256 : b * 256 + 256]
                sc_b = sc[r, b * 16 : b * 16 + 16]
                s = _q3k_h0(q, hv, x)
                sumi = _scaled8(sc_b, s)
                s = _q3k_h1(q[32:], hv, x[128:])
                sumi = np.int32(sumi + _scaled8(sc_b[8:], s))
                for g in range(16):
                    sumi = np.int32(sumi - 4 * np.int32(sc_b[g]) * xs[t, b * 16 + g])
                acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
            out[t, r] = acc


@njit(**_INL)
def _sums16(xq):
    """Σ of each 16 activation codes (n, K/16) int32 (Q8_K's bsums)."""
    n, k = xq.shape
    xs = np.empty((n, k // 16), np.int32)
    for t in range(n):
        for g in range(k // 16):
            s = np.int32(0)
            for j in range(16):
                s = np.int32(s + np.int32(xq[t, g * 16 + j]))
            xs[t, g] = s
    return xs


@njit(**KERNEL, parallel=True)
def mv_q2_k(qs, sc, mn, d, dmin, xq, xd, xbs, out):
    rows, nb = d.shape
    for r in prange(rows):
        for t in range(xq.shape[0]):
            acc = np.float32(0.0)
            for b in range(nb):
                sumi = np.int32(0)
                for h in range(2):
                    s = _q2k_h(qs[r, b * 64 + 32 * h : b * 64 + 32 * h + 32], xq[t, b * 256 + 128 * h :], 0)
                    sumi = np.int32(sumi + _scaled8(sc[r, b * 16 + 8 * h :], s))
                acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
            # Σ_g min·bsum, four super-blocks per pass (vectorizes; one at a time does not)
            for b in range(0, nb - nb % 4, 4):
                mb = mn[r, b * 16 : b * 16 + 64]
                xb = xbs[t, b * 16 : b * 16 + 64]
                m0 = np.int32(0)
                m1 = np.int32(0)
                m2 = np.int32(0)
                m3 = np.int32(0)
                for g in range(16):
                    m0 = np.int32(m0 + np.int32(mb[g]) * np.int32(xb[g]))
                    m1 = np.int32(m1 + np.int32(mb[16 + g]) * np.int32(xb[16 + g]))
                    m2 = np.int32(m2 + np.int32(mb[32 + g]) * np.int32(xb[32 + g]))
                    m3 = np.int32(m3 + np.int32(mb[48 + g]) * np.int32(xb[48 + g]))
                acc -= (xd[t, b] * dmin[r, b]) * np.float32(m0)
                acc -= (xd[t, b + 1] * dmin[r, b + 1]) * np.float32(m1)
                acc -= (xd[t, b + 2] * dmin[r, b + 2]) * np.float32(m2)
                acc -= (xd[t, b + 3] * dmin[r, b + 3]) * np.float32(m3)
            for b in range(nb - nb % 4, nb):
                summ = np.int32(0)
                for g in range(16):
                    summ = np.int32(summ + np.int32(mn[r, b * 16 + g]) * np.int32(xbs[t, b * 16 + g]))
                acc -= (xd[t, b] * dmin[r, b]) * np.float32(summ)
            out[t, r] = acc


@njit(**KERNEL, parallel=True)
def mv_tq2_0(qs, d, xq, xd, out):
    rows, nb = d.shape
    for r in prange(rows):
        for t in range(xq.shape[0]):
            acc = np.float32(0.0)
            for b in range(nb):
                sumi = np.int32(0)
                for h in range(2):
                    s = _q2k_h(qs[r, b * 64 + 32 * h : b * 64 + 32 * h + 32], xq[t, b * 256 + 128 * h :], 1)
                    sumi = np.int32(sumi + s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7])
                acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
            out[t, r] = acc


@njit(**_INL)
def _tq1(v, pw):
    """Ternary digit of byte v at power pw (llama.cpp's ``(uint8(v·pw)·3) >> 8``) minus 1."""
    return (((v * pw) & 255) * 3 >> 8) - 1


@njit(**_INL)
def _tq1_sum(q, n, x):
    """Σ over the 5·n ternary digits of the n bytes q: digit p of byte m pairs with x[n·p + m]."""
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    s4 = np.int32(0)
    for m in range(n):
        v = np.int32(q[m])
        s0 = np.int32(s0 + _tq1(v, 1) * np.int32(x[m]))
        s1 = np.int32(s1 + _tq1(v, 3) * np.int32(x[n + m]))
        s2 = np.int32(s2 + _tq1(v, 9) * np.int32(x[2 * n + m]))
        s3 = np.int32(s3 + _tq1(v, 27) * np.int32(x[3 * n + m]))
        s4 = np.int32(s4 + _tq1(v, 81) * np.int32(x[4 * n + m]))
    return np.int32(s0 + s1 + s2 + s3 + s4)


@njit(**KERNEL, parallel=True)
def mv_tq1_0(qs, qh, d, xq, xd, out):
    rows, nb = d.shape
    for r in prange(rows):
        for t in range(xq.shape[0]):
            acc = np.float32(0.0)
            for b in range(nb):
                x = xq[t, b * 256 : b * 256 + 256]
                q = qs[r, b * 48 : b * 48 + 48]
                sumi = np.int32(_tq1_sum(q, 32, x) + _tq1_sum(q[32:], 16, x[160:]))
                for p in range(4):
                    pw = np.int32(3**p)
                    for j in range(4):
                        sumi = np.int32(
                            sumi + _tq1(np.int32(qh[r, b * 4 + j]), pw) * np.int32(x[240 + 4 * p + j])
                        )
                acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
            out[t, r] = acc


@njit(**KERNEL, parallel=True)
def mv_q4_1(qs, d, m, xq, xd, xs, out):
    rows, nb = d.shape
    nb4 = nb - nb % 4
    for r in prange(rows):
        for t in range(xq.shape[0]):
            acc = np.float32(0.0)
            for b in range(0, nb4, 4):
                q = qs[r, b * 16 : b * 16 + 64]
                x = xq[t, b * 32 : b * 32 + 128]
                s0 = np.int32(0)
                s1 = np.int32(0)
                s2 = np.int32(0)
                s3 = np.int32(0)
                for j in range(16):
                    v0 = np.int32(q[j])
                    v1 = np.int32(q[16 + j])
                    v2 = np.int32(q[32 + j])
                    v3 = np.int32(q[48 + j])
                    s0 = np.int32(s0 + (v0 & 15) * np.int32(x[j]) + (v0 >> 4) * np.int32(x[16 + j]))
                    s1 = np.int32(s1 + (v1 & 15) * np.int32(x[32 + j]) + (v1 >> 4) * np.int32(x[48 + j]))
                    s2 = np.int32(s2 + (v2 & 15) * np.int32(x[64 + j]) + (v2 >> 4) * np.int32(x[80 + j]))
                    s3 = np.int32(s3 + (v3 & 15) * np.int32(x[96 + j]) + (v3 >> 4) * np.int32(x[112 + j]))
                acc += (d[r, b] * xd[t, b]) * np.float32(s0) + m[r, b] * xs[t, b]
                acc += (d[r, b + 1] * xd[t, b + 1]) * np.float32(s1) + m[r, b + 1] * xs[t, b + 1]
                acc += (d[r, b + 2] * xd[t, b + 2]) * np.float32(s2) + m[r, b + 2] * xs[t, b + 2]
                acc += (d[r, b + 3] * xd[t, b + 3]) * np.float32(s3) + m[r, b + 3] * xs[t, b + 3]
            for b in range(nb4, nb):
                s0 = np.int32(0)
                for j in range(16):
                    v0 = np.int32(qs[r, b * 16 + j])
                    s0 = np.int32(s0 + (v0 & 15) * np.int32(xq[t, b * 32 + j]))
                    s0 = np.int32(s0 + (v0 >> 4) * np.int32(xq[t, b * 32 + 16 + j]))
                acc += (d[r, b] * xd[t, b]) * np.float32(s0) + m[r, b] * xs[t, b]
            out[t, r] = acc


@njit(**_INLINE)
def _q5(v, h, j):
    """Q5_1 codes of byte v (low nibble: element j, high: j + 16) with qh bits j and j + 16."""
    return (v & 15) | np.int32(((h >> j) & 1) << 4), (v >> 4) | np.int32(((h >> (j + 16)) & 1) << 4)


@njit(**KERNEL, parallel=True)
def mv_q5_1(qs, qh, d, m, xq, xd, xs, out):
    rows, nb = d.shape
    nb4 = nb - nb % 4
    for r in prange(rows):
        for t in range(xq.shape[0]):
            acc = np.float32(0.0)
            for b in range(0, nb4, 4):
                q = qs[r, b * 16 : b * 16 + 64]
                x = xq[t, b * 32 : b * 32 + 128]
                h0 = np.int64(qh[r, b])
                h1 = np.int64(qh[r, b + 1])
                h2 = np.int64(qh[r, b + 2])
                h3 = np.int64(qh[r, b + 3])
                s0 = np.int32(0)
                s1 = np.int32(0)
                s2 = np.int32(0)
                s3 = np.int32(0)
                for j in range(16):
                    lo0, hi0 = _q5(np.int32(q[j]), h0, j)
                    lo1, hi1 = _q5(np.int32(q[16 + j]), h1, j)
                    lo2, hi2 = _q5(np.int32(q[32 + j]), h2, j)
                    lo3, hi3 = _q5(np.int32(q[48 + j]), h3, j)
                    s0 = np.int32(s0 + lo0 * np.int32(x[j]) + hi0 * np.int32(x[16 + j]))
                    s1 = np.int32(s1 + lo1 * np.int32(x[32 + j]) + hi1 * np.int32(x[48 + j]))
                    s2 = np.int32(s2 + lo2 * np.int32(x[64 + j]) + hi2 * np.int32(x[80 + j]))
                    s3 = np.int32(s3 + lo3 * np.int32(x[96 + j]) + hi3 * np.int32(x[112 + j]))
                acc += (d[r, b] * xd[t, b]) * np.float32(s0) + m[r, b] * xs[t, b]
                acc += (d[r, b + 1] * xd[t, b + 1]) * np.float32(s1) + m[r, b + 1] * xs[t, b + 1]
                acc += (d[r, b + 2] * xd[t, b + 2]) * np.float32(s2) + m[r, b + 2] * xs[t, b + 2]
                acc += (d[r, b + 3] * xd[t, b + 3]) * np.float32(s3) + m[r, b + 3] * xs[t, b + 3]
            for b in range(nb4, nb):
                h0 = np.int64(qh[r, b])
                s0 = np.int32(0)
                for j in range(16):
                    lo0, hi0 = _q5(np.int32(qs[r, b * 16 + j]), h0, j)
                    s0 = np.int32(
                        s0 + lo0 * np.int32(xq[t, b * 32 + j]) + hi0 * np.int32(xq[t, b * 32 + 16 + j])
                    )
                acc += (d[r, b] * xd[t, b]) * np.float32(s0) + m[r, b] * xs[t, b]
            out[t, r] = acc


@njit(**_INLINE)
def _sums4x32(q, x):
    """Integer dots of four consecutive 32-element blocks (q, x: 128 int8 each)."""
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    for j in range(32):
        s0 = np.int32(s0 + np.int32(q[j]) * np.int32(x[j]))
        s1 = np.int32(s1 + np.int32(q[32 + j]) * np.int32(x[32 + j]))
        s2 = np.int32(s2 + np.int32(q[64 + j]) * np.int32(x[64 + j]))
        s3 = np.int32(s3 + np.int32(q[96 + j]) * np.int32(x[96 + j]))
    return s0, s1, s2, s3


@njit(**KERNEL, parallel=True)
def mv_lut4(qs, d, kv, xq, xd, out):
    """IQ4_NL / MXFP4 (4-bit indices into the 16-entry table kv) · Q8_0: each row's codes looked
    up 16 at a time (:func:`_lut16`) into a scratch row, then integer dots four blocks at a time."""
    rows, nb = d.shape
    nb4 = nb - nb % 4
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        for r in range(c * CH, min(rows, c * CH + CH)):
            qr = qs[r]
            for b in range(nb):
                _lut16(qr, b * 16, kv, q, b * 32)
            for t in range(xq.shape[0]):
                acc = np.float32(0.0)
                for b in range(0, nb4, 4):
                    s = _sums4x32(q[b * 32 : b * 32 + 128], xq[t, b * 32 : b * 32 + 128])
                    for i in range(4):
                        acc += (d[r, b + i] * xd[t, b + i]) * np.float32(s[i])
                for b in range(nb4, nb):
                    si = np.int32(0)
                    for j in range(32):
                        si = np.int32(si + np.int32(q[b * 32 + j]) * np.int32(xq[t, b * 32 + j]))
                    acc += (d[r, b] * xd[t, b]) * np.float32(si)
                out[t, r] = acc


@njit(**KERNEL, parallel=True)
def mv_iq4_xs(qs, sc, d, kv, xq, xd, out):
    """IQ4_XS · Q8_K: codes looked up as in :func:`mv_lut4`, one scale per 32 elements."""
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        for r in range(c * CH, min(rows, c * CH + CH)):
            qr = qs[r]
            for i in range(nb * 8):
                _lut16(qr, i * 16, kv, q, i * 32)
            for t in range(xq.shape[0]):
                acc = np.float32(0.0)
                for b in range(nb):
                    o = b * 256
                    s = _sums4x32(q[o : o + 128], xq[t, o : o + 128])
                    u = _sums4x32(q[o + 128 : o + 256], xq[t, o + 128 : o + 256])
                    k = b * 8
                    sumi = np.int32(
                        np.int32(sc[r, k]) * s[0]
                        + np.int32(sc[r, k + 1]) * s[1]
                        + np.int32(sc[r, k + 2]) * s[2]
                        + np.int32(sc[r, k + 3]) * s[3]
                        + np.int32(sc[r, k + 4]) * u[0]
                        + np.int32(sc[r, k + 5]) * u[1]
                        + np.int32(sc[r, k + 6]) * u[2]
                        + np.int32(sc[r, k + 7]) * u[3]
                    )
                    acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
                out[t, r] = acc


# ============================================================================ dequantize drivers


@njit(**KERNEL, parallel=True)
def dq_q4_1(qs, d, m, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for b in range(nb):
            for j in range(16):
                v = qs[r, b * 16 + j]
                out[i, b * 32 + j] = d[r, b] * np.float32(v & 15) + m[r, b]
                out[i, b * 32 + 16 + j] = d[r, b] * np.float32(v >> 4) + m[r, b]
    return out


@njit(**KERNEL, parallel=True)
def dq_q5_1(qs, qh, d, m, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_q5_1(qs, qh, r0 + i, q)
            for b in range(nb):
                for j in range(32):
                    out[i, b * 32 + j] = d[r0 + i, b] * np.float32(q[b * 32 + j]) + m[r0 + i, b]
    return out


@njit(**KERNEL, parallel=True)
def dq_lut4(qs, d, kv, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_lut4(qs, kv, r0 + i, q)
            _dq_codes32(q, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_q2_k(qs, sc, mn, d, dmin, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            r = r0 + i
            _u_q2_k(qs, sc, r, q, ls)
            for b in range(nb):
                for g in range(16):
                    dl = d[r, b] * np.float32(ls[b * 16 + g])
                    ml = dmin[r, b] * np.float32(mn[r, b * 16 + g])
                    o = b * 256 + g * 16
                    for j in range(16):
                        out[i, o + j] = dl * np.float32(q[o + j]) - ml
    return out


@njit(**KERNEL, parallel=True)
def dq_q3_k(qs, hm, sc, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_q3_k(qs, hm, sc, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq4_xs(qs, sc, d, kv, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq4_xs(qs, sc, kv, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_tq1_0(qs, qh, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_tq1_0(qs, qh, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_tq2_0(qs, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_tq2_0(qs, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq2_xxs(gi, ss, d, grid, sign8, ksg, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    m64 = _sign_masks(sign8)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq2_xxs(gi, ss, grid, sign8, ksg, r0 + i, q, ls, m64)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq2_xs(qs, sc, d, grid, sign8, ksg, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    m64 = _sign_masks(sign8)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq2_xs(qs, sc, grid, sign8, ksg, r0 + i, q, ls, m64)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq2_s(qs, sg, qh, sc, d, grid, sign8, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    m64 = _sign_masks(sign8)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq2_s(qs, sg, qh, sc, grid, sign8, r0 + i, q, ls, m64)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq3_xxs(q3, ss, d, grid, sign8, ksg, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    m64 = _sign_masks(sign8)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq3_xxs(q3, ss, grid, sign8, ksg, r0 + i, q, ls, m64)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq3_s(qs, qh, sg, sc, d, grid, sign8, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    m64 = _sign_masks(sign8)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq3_s(qs, qh, sg, sc, grid, sign8, r0 + i, q, ls, m64)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq1_s(qs, qh, d, grid, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    g2 = _iq1_rows(grid)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq1_s(qs, qh, grid, r0 + i, q, ls, g2)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq1_m(qs, qh, sc, d, grid, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    g2 = _iq1_rows(grid)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq1_m(qs, qh, sc, grid, r0 + i, q, ls, g2)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


# ============================================================================ float weights


@njit(**_INL)
def _f16_row(w, r, bits, f):
    """Row r of fp16 bits -> f32 in ``f`` (a float32 view of ``bits``), exact, vectorizable:
    shift exponent+mantissa into place, rescale by 2^112 (handles zeros and subnormals),
    then put back the sign and the all-ones exponent of inf/NaN."""
    k = w.shape[1]
    for j in range(k):
        bits[j] = np.uint32(w[r, j] & 0x7FFF) << 13
    for j in range(k):
        f[j] = f[j] * np.float32(2.0**112)
    for j in range(k):
        h = np.uint32(w[r, j])
        inf = np.uint32(0x7F800000) if (h & 0x7C00) == 0x7C00 else np.uint32(0)
        bits[j] = bits[j] | ((h & 0x8000) << 16) | inf


@intrinsic
def _f16_merge(typingctx, f, b):
    """bits(f) | b as float32 (sign / inf-exponent of :func:`_f16_f32`)."""
    if f != types.float32 or not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        fb = builder.bitcast(args[0], ir.IntType(32))
        return builder.bitcast(builder.or_(fb, _i32(builder, args[1])), ir.FloatType())

    return types.float32(f, b), codegen


@njit(**_INLINE)
def _f16_f32(h):
    """fp16 bits (uint16) -> float32, exact, branch-free and vectorizable: exponent+mantissa
    shifted into place and rescaled by 2^112 (zeros and subnormals come out right), then the
    sign and, for inf/NaN, the all-ones exponent put back."""
    h32 = np.uint32(h)
    f = _as_f32((h32 & np.uint32(0x7FFF)) << np.uint32(13)) * np.float32(2.0**112)
    b = (h32 & np.uint32(0x8000)) << np.uint32(16)
    if (h32 & np.uint32(0x7C00)) == np.uint32(0x7C00):
        b |= np.uint32(0x7F800000)
    return _f16_merge(f, b)


@njit(**_FDOT)
def mv_f32(w, x, out):
    rows, k = w.shape
    for c in prange((rows + CH - 1) // CH):
        for r in range(c * CH, min(rows, c * CH + CH)):
            for t in range(x.shape[0]):
                s = np.float32(0.0)
                for j in range(k):
                    s += w[r, j] * x[t, j]
                out[t, r] = s


@njit(**_FDOT)
def mv_f16_bits(w, x, out):
    """F16 weights converted with integer ops (:func:`_f16_f32`): any CPU."""
    rows, k = w.shape
    for c in prange((rows + CH - 1) // CH):
        for r in range(c * CH, min(rows, c * CH + CH)):
            for t in range(x.shape[0]):
                s = np.float32(0.0)
                for j in range(k):
                    s += _f16_f32(w[r, j]) * x[t, j]
                out[t, r] = s


@intrinsic
def _h2f(typingctx, h):
    """fp16 bits (uint16) -> float32 with LLVM's ``fpext half`` (vcvtph2ps / fcvt): only compiled
    where the CPU converts fp16 natively (:data:`_HALF_NATIVE`)."""
    if h != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@njit(**_FDOT)
def mv_f16_native(w, x, out):
    """F16 weights converted by the CPU's fp16 instructions, 2x :func:`mv_f16_bits` here."""
    rows, k = w.shape
    for c in prange((rows + CH - 1) // CH):
        for r in range(c * CH, min(rows, c * CH + CH)):
            for t in range(x.shape[0]):
                s = np.float32(0.0)
                for j in range(k):
                    s += _h2f(w[r, j]) * x[t, j]
                out[t, r] = s


_HALF_NATIVE = _MACHINE in ("aarch64", "arm64") or (_X86 and "+f16c" in _host_features())
mv_f16 = mv_f16_native if _HALF_NATIVE else mv_f16_bits


@njit(**_FDOT)
def mv_bf16(w, x, out):
    rows, k = w.shape
    for c in prange((rows + CH - 1) // CH):
        for r in range(c * CH, min(rows, c * CH + CH)):
            for t in range(x.shape[0]):
                s = np.float32(0.0)
                for j in range(k):
                    s += _as_f32(np.uint32(w[r, j]) << np.uint32(16)) * x[t, j]
                out[t, r] = s


@njit(**KERNEL, parallel=True)
def dq_f16(w, r0, r1):
    k = w.shape[1]
    out = np.empty((r1 - r0, k), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        bits = np.empty(k, np.uint32)
        f = bits.view(np.float32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _f16_row(w, r0 + i, bits, f)
            for j in range(k):
                out[i, j] = f[j]
    return out


@njit(**KERNEL, parallel=True)
def dq_bf16(w, r0, r1):
    k = w.shape[1]
    out = np.empty((r1 - r0, k), np.uint32)
    for i in prange(r1 - r0):
        for j in range(k):
            out[i, j] = np.uint32(w[r0 + i, j]) << 16
    return out.view(np.float32)
