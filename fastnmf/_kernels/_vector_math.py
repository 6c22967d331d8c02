"""Logarithms and powers of several float64 values at once, in one vector: the KL loss
rows' logs (``log4``) and the general-beta terms' wh^(beta-1) (``power_in_place``).

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

Powers x^a = exp(a log x), eight lanes at a time (``pow_lanes``), for the terms of a beta not
in {1, 2}, which need wh^(beta-1) at every one of the m n entries: the C library's scalar
``pow`` took about 20 ns an entry and bounded that step. The exponential reduces
y = k ln2 + t, |t| <= ln2 / 2 (k = y / ln2 rounded; t by the same split ln 2, so k ln2_hi is
exact), sums exp(t) by its Taylor series to t^14 / 14! (the first term left out is below
2e-19 of the sum), and adds k to the exponent bits. With log x within a few ulp, the power's
relative error is about (|y| + 4) units of 2^-53, y = a log x: 2e-15 for |y| <= 10. Lanes
that are not positive, normal and finite, or whose |y| exceeds 700 (where 2^k would leave
the normal range), take the C library's ``pow`` instead, all eight; zero lanes with a > 0
stay in the vector (0^a = 0: the zeros of a dense X in its loss). Measured (one thread,
10^7 elements): 2.07 ns an element against 18.6 for the C library's pow.

Powers stored as float32 take shorter series (SINGLE_TERMS, SINGLE_EXP_TERMS; the terms
left out are about 2e-9 (log) and 7e-9 (exp) of the result; measured within 0.58 float32 ulp):
1.55 ns an element instead of 2.22.

Half-integer exponents (a = k / 2, 0 < |k| <= 7: beta - 1 and beta for beta = 0, 0.5, 1.5,
2.5, 3) skip the exp and log: a square root, up to three products and a reciprocal
(``half_power``), 0.28-0.87 ns an element and within a few ulp.
"""
import math
from decimal import Decimal, localcontext

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import inline_helper


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
POWER_LANES = 8                    # one 64-byte vector of float64
EXP_TERMS = 15                      # 1, t, t^2/2!, ..., t^14/14!
# for powers rounded to float32: the first terms left out are about 2.0e-9 (log: s^10 / 11)
# and 7.3e-9 (exp: t^8 / 8! against e^t >= 0.707) of the results, under float32's half ulp (6e-8)
SINGLE_TERMS, SINGLE_EXP_TERMS = 5, 8
EXP_RANGE = 700.0                   # |a log x| beyond this takes the scalar pow
EXACT = ("contract",)               # fused multiply-adds (inside a kernel, Numba's fast-math
                                    # pass puts the kernel's own flags on every instruction)
HALF_POWER_MAX = 7                  # a = k / 2 with 0 < |k| <= 7: square root and products


def vector_log(builder, v, terms=TERMS):
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
    p = dconst(1.0 / (2 * terms - 1))
    for k in range(terms - 2, -1, -1):
        p = b.fadd(b.fmul(p, z, flags=EXACT), dconst(1.0 / (2 * k + 1)), flags=EXACT)
    log_m = b.fmul(b.fadd(s, s), p)
    ef = b.sitofp(e, vd)
    rest = b.fadd(log_m, b.fmul(ef, dconst(LN2_LO), flags=EXACT), flags=EXACT)
    return b.fadd(b.fmul(ef, dconst(LN2_HI), flags=EXACT), rest, flags=EXACT)


def _const(vector_type, x):
    return ir.Constant(vector_type, [x] * vector_type.count)


def _vector_or_lanes(builder, ok, quick, scalar, v):
    """IR: ``quick()`` (a vector) when every lane of the i1 vector ``ok`` is set, else
    ``scalar(x)`` on each lane x of ``v`` (the C library's function), as one vector."""
    n = v.type.count
    fast = builder.icmp_unsigned("==", builder.bitcast(ok, ir.IntType(n)),
                                 ir.Constant(ir.IntType(n), (1 << n) - 1))
    with builder.if_else(fast, likely=True) as (vector_path, scalar_path):
        with vector_path:
            fast_value = quick()
            fast_block = builder.block
        with scalar_path:
            slow = ir.Constant(v.type, ir.Undefined)
            for j in range(n):
                lane = ir.Constant(ir.IntType(32), j)
                slow = builder.insert_element(slow, scalar(builder.extract_element(v, lane)),
                                              lane)
            slow_block = builder.block
    result = builder.phi(v.type)
    result.add_incoming(fast_value, fast_block)
    result.add_incoming(slow, slow_block)
    return result


def _normal(builder, v):
    """IR: which lanes of the float64 vector ``v`` are positive, normal and finite."""
    vd = v.type
    return builder.and_(builder.fcmp_ordered(">=", v, _const(vd, np.finfo(np.float64).tiny)),
                        builder.fcmp_ordered("<", v, _const(vd, math.inf)))


def log_lanes(context, builder, v):
    """IR: the natural logarithm of each lane of the float64 vector ``v``: ``vector_log``
    when every lane is positive, normal and finite, else ``math.log`` lane by lane."""
    scalar_log = context.get_function(math.log, types.float64(types.float64))
    return _vector_or_lanes(builder, _normal(builder, v), lambda: vector_log(builder, v),
                            lambda x: scalar_log(builder, [x]), v)


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



def _vector_call(builder, name, args):
    """IR: a call of the LLVM intrinsic ``name`` (e.g. "llvm.fma") on float64 vectors."""
    vd = args[0].type
    fnty = ir.FunctionType(vd, [vd] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"{name}.v{vd.count}f64")
    return builder.call(fn, args)


def splat(builder, x, vector_type):
    """A vector of ``vector_type`` with every lane x."""
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), x,
                                 ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), mask)


def vector_exp(builder, y, terms=EXP_TERMS):
    """IR: e^y for each lane of a float64 vector ``y`` whose lanes lie in
    [-EXP_RANGE, EXP_RANGE] (see the module docstring)."""
    b = builder
    vd = y.type
    vi = ir.VectorType(ir.IntType(64), vd.count)
    # Numba puts the kernel's fast-math flags on every float instruction of the module (its
    # reassoc would fold a rounding trick or the split ln 2): so rint and fma as intrinsics
    k = _vector_call(b, "llvm.rint", [b.fmul(y, _const(vd, 1.0 / math.log(2.0)))])
    minus_k = b.fneg(k)
    t = _vector_call(b, "llvm.fma", [minus_k, _const(vd, LN2_HI), y])
    t = _vector_call(b, "llvm.fma", [minus_k, _const(vd, LN2_LO), t])
    p = _const(vd, 1.0 / math.factorial(terms - 1))
    for j in range(terms - 2, -1, -1):
        p = b.fadd(b.fmul(p, t, flags=EXACT), _const(vd, 1.0 / math.factorial(j)), flags=EXACT)
    scale = b.shl(b.fptosi(k, vi), _const(vi, 52))
    return b.bitcast(b.add(b.bitcast(p, vi), scale), vd)


def pow_lanes(context, builder, v, a, single=False):
    """IR: v^a for each lane of the float64 vector ``v`` (a: a float64 scalar), as
    exp(a log v) when every lane is positive, normal and finite with |a log v| <=
    EXP_RANGE, else by the C library's ``pow`` lane by lane. ``single``: with the shorter
    series (SINGLE_TERMS, SINGLE_EXP_TERMS), for results rounded to float32."""
    b = builder
    vd = v.type
    n = vd.count
    log_terms, exp_terms = (SINGLE_TERMS, SINGLE_EXP_TERMS) if single else (TERMS, EXP_TERMS)
    y = b.fmul(vector_log(b, v, log_terms), splat(b, a, vd))
    ok = b.and_(_normal(b, v), b.and_(b.fcmp_ordered("<=", y, _const(vd, EXP_RANGE)),
                                      b.fcmp_ordered(">=", y, _const(vd, -EXP_RANGE))))
    # 0^a = 0 for a > 0 (the zeros of a dense X in its loss): in the vector too
    zero = b.fcmp_ordered("==", v, _const(vd, 0.0))
    positive = b.fcmp_ordered(">", a, ir.Constant(ir.DoubleType(), 0.0))
    ok = b.or_(ok, b.and_(zero, splat(b, positive, ir.VectorType(ir.IntType(1), n))))
    scalar_pow = context.get_function(math.pow, types.float64(types.float64, types.float64))
    return _vector_or_lanes(
        b, ok, lambda: b.select(zero, _const(vd, 0.0), vector_exp(b, y, exp_terms)),
        lambda x: scalar_pow(b, [x, a]), v)


def _row_ok(row, p, dtypes):
    """A 1-D C-contiguous array of one of ``dtypes`` and an integer position."""
    return (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and row.dtype in dtypes and isinstance(p, types.Integer))


def _row_lanes(context, builder, signature, args):
    """IR: (address, value) of the vector row[p:p + POWER_LANES] of the row intrinsics'
    first two arguments (row, p), in the row's dtype."""
    row = signature.args[0]
    data = context.make_array(row)(context, builder, args[0]).data
    vt = ir.VectorType(context.get_value_type(row.dtype), POWER_LANES)
    start = context.cast(builder, args[1], signature.args[1], types.intp)
    address = builder.bitcast(builder.gep(data, [start]), vt.as_pointer())
    return address, builder.load(address, align=row.dtype.bitwidth // 8)


@intrinsic
def power_lanes(typingctx, row, p, a):
    """row[p:p + POWER_LANES] <- row[p:p + POWER_LANES] ** a in place (``pow_lanes`` in
    float64: the full series for a float64 row, the short one for a float32 row, whose
    result is rounded to float32), for a 1-D C-contiguous float array ``row``. No bounds
    check: the caller keeps p + POWER_LANES <= len(row)."""
    if not (_row_ok(row, p, (types.float32, types.float64)) and a == types.float64):
        return None

    def codegen(context, builder, signature, args):
        b = builder
        single = row.dtype == types.float32      # stored as float32: the short series
        address, v = _row_lanes(context, b, signature, args)
        if single:
            v = b.fpext(v, ir.VectorType(ir.DoubleType(), POWER_LANES))
        out = pow_lanes(context, b, v, args[2], single)
        if single:
            out = b.fptrunc(out, address.type.pointee)
        b.store(out, address, align=row.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(row, p, a), codegen


@intrinsic
def log_lanes_row(typingctx, row, p):
    """row[p:p + POWER_LANES] <- log(row[p:p + POWER_LANES]) in place (``log_lanes``) for a
    1-D C-contiguous float64 array. No bounds check, as ``power_lanes``."""
    if not _row_ok(row, p, (types.float64,)):
        return None

    def codegen(context, builder, signature, args):
        address, v = _row_lanes(context, builder, signature, args)
        builder.store(log_lanes(context, builder, v), address, align=8)
        return context.get_dummy_value()

    return types.void(row, p), codegen


@inline_helper
def log_in_place(row):
    """row <- log(row) elementwise for a 1-D C-contiguous float64 array: eight lanes at a
    time by ``log_lanes_row``, the last few by ``math.log``."""
    size = row.shape[0]
    q = 0
    while q + POWER_LANES <= size:
        log_lanes_row(row, q)
        q += POWER_LANES
    while q < size:
        row[q] = math.log(row[q])
        q += 1


@inline_helper
def half_steps(a):
    """(whole, odd, invert) with |a| = whole + odd / 2 when 2a is an integer k with
    0 < |k| <= HALF_POWER_MAX (the exponents of beta = 0, 0.5, 1.5, 2.5, 3, ...), else
    whole = -1."""
    k = 2.0 * a
    if k != math.floor(k) or k == 0.0 or abs(k) > HALF_POWER_MAX:
        return -1, False, False
    steps = int(abs(k))
    return steps // 2, steps % 2 == 1, a < 0.0


@inline_helper
def half_power(x, whole, odd, invert):
    """x ** (+-(whole + odd / 2)) in float64, 0 <= whole <= 3: a square root, up to three
    products and a reciprocal, each correctly rounded (within a few ulp in all). The
    branches are the same for every element, so LLVM vectorizes a loop of these."""
    v = np.float64(x)
    r = math.sqrt(v) if odd else 1.0
    if whole >= 1:
        r *= v
    if whole >= 2:
        r *= v
    if whole >= 3:
        r *= v
    return 1.0 / r if invert else r


@inline_helper
def power_in_place(row, a):
    """row <- row ** a elementwise (a: float64) for a 1-D C-contiguous float array: by
    ``half_power`` for a half-integer a (``half_steps``), else eight lanes at a time by
    ``power_lanes`` and the last few by the scalar ``**``."""
    size = row.shape[0]
    whole, odd, invert = half_steps(a)
    if whole >= 0:
        for q in range(size):
            row[q] = half_power(row[q], whole, odd, invert)
        return
    q = 0
    while q + POWER_LANES <= size:
        power_lanes(row, q, a)
        q += POWER_LANES
    while q < size:
        row[q] = row[q] ** a
        q += 1
