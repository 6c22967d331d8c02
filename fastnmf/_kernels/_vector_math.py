"""A natural logarithm of four float64 values at once, in one vector, for the KL loss rows.

Numba lowers ``math.log`` to a call of the C library's scalar log (its pip builds have no
vector math library), and that call bounded ``csr_kl_loss_rows``: with its dot products
done four nonzeros at a time the loss still cost about 0.8 of a KL iteration. ``log4``
computes the four logarithms side by side in a 4-lane vector:

    x = 2^e m, m in [sqrt(2)/2, sqrt(2));  f = m - 1;  s = f / (2 + f)  (|s| <= 0.1716)
    log m = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^(2K)/(2K+1))
    log x = e ln2_hi + (log m + e ln2_lo)

with K = TERMS - 1 = 9: the first term left out is below 2e-18 of the sum, so the error is
that of the few roundings (a few units in the last place; m - 1 is exact). ln 2 is split
into a ``ln2_hi`` with 20 significant bits (e ln2_hi is exact) and the rest. Only lanes that
are positive, normal and finite take this path; if any of the four is not, all four go to
``math.log`` (zero, subnormal, inf and NaN keep the C library's results).
"""
import math
from decimal import Decimal, localcontext

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _ln2_split():
    """(hi, lo): hi = ln 2 with the low 32 bits of its significand cleared, lo = ln 2 - hi."""
    with localcontext() as ctx:      # the caller's decimal context stays as it was
        ctx.prec = 40
        ln2 = Decimal(2).ln()
        bits = np.float64(float(ln2)).view(np.uint64) & np.uint64(0xFFFFFFFF00000000)
        hi = float(bits.view(np.float64))
        return hi, float(ln2 - Decimal(hi))


LN2_HI, LN2_LO = _ln2_split()
TERMS = 10                          # 1, 1/3, ..., 1/19: the atanh series in s^2
LANES = 4
EXACT = ("contract",)               # fused multiply-adds; no regrouping of the sums


def vector_log(builder, v):
    """IR: the natural logarithm of each lane of a float64 vector ``v`` whose lanes are
    positive, normal and finite (see the module docstring)."""
    b = builder
    n = v.type.count
    f64, i64 = ir.DoubleType(), ir.IntType(64)
    vd, vi = ir.VectorType(f64, n), ir.VectorType(i64, n)

    def dconst(x):
        return ir.Constant(vd, [x] * n)

    def iconst(x):
        return ir.Constant(vi, [x] * n)

    bits = b.bitcast(v, vi)
    e = b.sub(b.lshr(bits, iconst(52)), iconst(1023))
    m = b.bitcast(b.or_(b.and_(bits, iconst((1 << 52) - 1)), iconst(1023 << 52)), vd)
    big = b.fcmp_ordered(">", m, dconst(math.sqrt(2.0)))      # m in [1, 2): fold to
    m = b.select(big, b.fmul(m, dconst(0.5)), m)               # [sqrt(2)/2, sqrt(2))
    e = b.add(e, b.zext(big, vi))
    f = b.fsub(m, dconst(1.0))
    s = b.fdiv(f, b.fadd(f, dconst(2.0)))
    z = b.fmul(s, s)
    p = dconst(1.0 / (2 * TERMS - 1))
    for k in range(TERMS - 2, -1, -1):
        p = b.fadd(b.fmul(p, z, flags=EXACT), dconst(1.0 / (2 * k + 1)), flags=EXACT)
    log_m = b.fmul(b.fadd(s, s), p)
    ef = b.sitofp(e, vd)
    rest = b.fadd(log_m, b.fmul(ef, dconst(LN2_LO), flags=EXACT), flags=EXACT)
    return b.fadd(b.fmul(ef, dconst(LN2_HI), flags=EXACT), rest, flags=EXACT)


def log_lanes(context, builder, v):
    """IR: the natural logarithm of each lane of the float64 vector ``v``: ``vector_log``
    when every lane is positive, normal and finite, else ``math.log`` lane by lane."""
    n = v.type.count
    vd = v.type
    normal = builder.fcmp_ordered(">=", v, ir.Constant(vd, [np.finfo(np.float64).tiny] * n))
    finite = builder.fcmp_ordered("<", v, ir.Constant(vd, [math.inf] * n))
    lanes = builder.bitcast(builder.and_(normal, finite), ir.IntType(n))
    fast = builder.icmp_unsigned("==", lanes, ir.Constant(ir.IntType(n), (1 << n) - 1))
    scalar_log = context.get_function(math.log, types.float64(types.float64))
    with builder.if_else(fast, likely=True) as (vector_path, scalar_path):
        with vector_path:
            quick = vector_log(builder, v)
            quick_block = builder.block
        with scalar_path:
            slow = ir.Constant(vd, ir.Undefined)
            for j in range(n):
                lane = ir.Constant(ir.IntType(32), j)
                slow = builder.insert_element(
                    slow, scalar_log(builder, [builder.extract_element(v, lane)]), lane)
            slow_block = builder.block
    result = builder.phi(vd)
    result.add_incoming(quick, quick_block)
    result.add_incoming(slow, slow_block)
    return result


@intrinsic
def log4(typingctx, a, b, c, d):
    """(log a, log b, log c, log d) for four float64s, as one vector (``vector_log``) when
    all four are positive, normal and finite, else by ``math.log`` each."""
    if not all(t == types.float64 for t in (a, b, c, d)):
        return None
    out = types.UniTuple(types.float64, LANES)
    sig = out(a, b, c, d)

    def codegen(context, builder, signature, args):
        vd = ir.VectorType(ir.DoubleType(), LANES)
        v = ir.Constant(vd, ir.Undefined)
        for j, x in enumerate(args):
            v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), j))
        result = log_lanes(context, builder, v)
        return context.make_tuple(builder, out, [
            builder.extract_element(result, ir.Constant(ir.IntType(32), j))
            for j in range(LANES)])

    return sig, codegen

