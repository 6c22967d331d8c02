"""The vector logarithm of the KL loss rows against NumPy's log."""
import math
from fractions import Fraction

import numba
import numpy as np

from fastnmf._kernels._vector_math import LN2_HI, LN2_LO, log4


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
