"""The vector logarithm and power of the kernels against NumPy's log and power."""
import math
from fractions import Fraction

import numba
import numpy as np
import pytest

from fastnmf._jit import FASTMATH
from fastnmf._kernels._vector_math import LN2_HI, LN2_LO, log4, log_in_place, power_in_place


@numba.njit(cache=False)
def _log_all(x):
    out = np.empty_like(x)
    for i in range(0, x.size, 4):
        a, b, c, d = log4(x[i], x[i + 1], x[i + 2], x[i + 3])
        out[i], out[i + 1], out[i + 2], out[i + 3] = a, b, c, d
    return out


def test_log4_accuracy_over_the_normal_range():
    """Within 4 units in the last place of NumPy's log, over every binade of the normal
    range, around 1 (where log is tiny) and at the folding point sqrt(2)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.exp(rng.uniform(-708.0, 709.0, 200_000)),
                        rng.uniform(0.5, 2.0, 100_000),
                        1.0 + rng.uniform(-1e-9, 1e-9, 4_000),
                        np.nextafter(math.sqrt(2.0), [0.0, 4.0]),
                        [math.sqrt(2.0), 1.0, 2.0, 0.5, np.finfo(np.float64).tiny,
                         np.finfo(np.float64).max]])
    x = x[: x.size - x.size % 4]
    got, want = _log_all(x), np.log(x)
    assert np.all(np.abs(got - want) <= 4 * np.spacing(np.abs(want)))
    assert _log_all(np.ones(4)).tolist() == [0.0] * 4


def test_log4_special_values_take_the_scalar_log():
    """Zero, subnormal, infinite, NaN and negative lanes give the C library's results; the
    other lanes of their group are still right."""
    def c_log(v):
        if math.isnan(v) or v < 0:
            return math.nan
        return -math.inf if v == 0 else math.log(v)
    special = [0.0, 5e-324, 1e-310, math.inf, math.nan, -1.0, -math.inf]
    for s in special:
        x = np.array([3.0, s, 7.5, 1e-300])
        np.testing.assert_array_equal(_log_all(x), [c_log(v) for v in x])


def test_ln2_split():
    """e * LN2_HI is exact for every binary exponent of a float64; the parts add to ln 2."""
    assert LN2_HI + LN2_LO == math.log(2.0)
    hi_bits = np.float64(LN2_HI).view(np.uint64)
    assert hi_bits & np.uint64(0xFFFFFFFF) == 0
    for e in (-1074, -1, 1, 1023):      # the rounded product equals the exact one
        assert Fraction(e * LN2_HI) == e * Fraction(LN2_HI)


def test_ln2_split_leaves_the_decimal_context_alone():
    import decimal

    from fastnmf._kernels._vector_math import _ln2_split
    with decimal.localcontext() as ctx:
        ctx.prec = 11
        assert _ln2_split() == (LN2_HI, LN2_LO)
        assert decimal.getcontext().prec == 11


# compiled with the kernels' fast-math flags: Numba puts them on every float instruction of
# the module, the power's own IR included (a reassoc there once folded its rounding step)
@numba.njit(cache=False, fastmath=set(FASTMATH), error_model="numpy")
def _power(x, a):
    power_in_place(x, a)


EXPONENTS = [-1.7, -1.0, -0.5, 0.25, 0.5, 1.5, 2.5]


@pytest.mark.parametrize("a", EXPONENTS)
def test_power_accuracy_float64(a):
    """Within (|a log x| + 8) units of 2^-53 of NumPy's power (the error bound of
    exp(a log x) with log and exp each within a few ulp), over the whole normal range, at
    every row length 0-19 (the scalar tail) and for a long row."""
    rng = np.random.default_rng(1)
    x = np.exp(rng.uniform(-700.0, 700.0, 100_003) / max(1.0, abs(a)))
    got = x.copy()
    _power(got, a)
    want = np.power(x, a)
    bound = (np.abs(a * np.log(x)) + 8.0) * 2.0**-53 * want
    assert np.all(np.abs(got - want) <= bound)
    for size in range(20):
        got = x[:size].copy()
        _power(got, a)
        assert np.all(np.abs(got - want[:size]) <= bound[:size])


@pytest.mark.parametrize("a", EXPONENTS)
def test_power_float32_rows_round_once(a):
    """A float32 row is raised in float64 and rounded once: within one float32 ulp of the
    float64 power."""
    rng = np.random.default_rng(2)
    x = rng.uniform(1e-6, 1e6, 50_001).astype(np.float32)
    got = x.copy()
    _power(got, a)
    want = np.power(x.astype(np.float64), a)
    assert got.dtype == np.float32
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want).astype(np.float32)))


def test_power_special_values_and_out_of_range_lanes():
    """Zero, subnormal, inf, NaN, negative lanes and |a log x| > 700, for exponents of both
    paths (half-integer: square root and products; others: the vector exp and log, whose
    unfit lanes take the C library's pow): results that are 0, inf or NaN are NumPy's
    exactly, the others within the accuracy bound; the other lanes of a group stay right."""
    special = [0.0, 5e-324, 1e-310, math.inf, math.nan, -1.0, -2.5, 1e300, 1e-300]
    for a in (0.5, -0.5, 3.0, -3.0, 2.0, 0.3, -1.7):
        for v in special:
            x = np.array([3.0, v, 7.5, 1e-3, 2.0, 0.3, 11.0, 1e5, 4.0])
            got = x.copy()
            with np.errstate(all="ignore"):
                _power(got, a)
                want = np.power(x, a)
                plain = np.isfinite(want) & (want != 0)
                bound = (np.abs(a * np.log(np.abs(np.where(plain, x, 1.0)))) + 8.0) * 2.0**-53
            assert np.all(np.abs(got[plain] - want[plain]) <= bound[plain] * np.abs(want[plain]))
            np.testing.assert_array_equal(got[~plain], want[~plain])


@numba.njit(cache=False, fastmath=set(FASTMATH), error_model="numpy")
def _log_row(x):
    log_in_place(x)


def test_log_in_place():
    """Eight lanes at a time as ``log4`` (within 4 ulp of NumPy's log), the tail of every
    row length 0-19 by ``math.log``; a group with a zero, subnormal, inf, NaN or negative
    lane gives the C library's results."""
    rng = np.random.default_rng(4)
    x = np.exp(rng.uniform(-708.0, 709.0, 100_003))
    want = np.log(x)
    for row in [x] + [x[:k] for k in range(20)]:
        got = row.copy()
        _log_row(got)
        assert np.all(np.abs(got - want[:row.size]) <= 4 * np.spacing(np.abs(want[:row.size])))
    for v in (0.0, 5e-324, math.inf, math.nan, -1.0):
        row = np.array([3.0, v, 7.5, 1e-300, 2.0, 0.3, 11.0, 1e5, 4.0])
        got = row.copy()
        with np.errstate(all="ignore"):
            _log_row(got)
            np.testing.assert_array_equal(got, [math.log(t) if t > 0 else np.log(t)
                                                for t in row])
