"""pytest-benchmark micro benchmarks of the Numba kernels and one small end-to-end fit.

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only

Not part of the default test run (pytest's testpaths is tests/). Sizes are the "small" ones of
_common.py (FASTNMF_BENCH_QUICK=1 shrinks them further). Each test calls its kernel once
before timing, so JIT compilation (or loading the on-disk cache) is not measured.
"""
import warnings

import numpy as np

from . import _common as c

try:
    import pytest
    parametrize = pytest.mark.parametrize
    # short calibration: the whole file runs in seconds on an idle machine
    pytestmark = pytest.mark.benchmark(max_time=0.25, min_rounds=5)
except ImportError:  # asv imports every module of this package; its envs need not have pytest
    def parametrize(*args, **kwargs):
        return lambda func: func

DTYPES = c.DTYPES
SIZE = "small"


def _csr(dtype, sizes=c.CSR_SIZES):
    m, n, nnz, r = sizes[SIZE]
    X = c.random_csr(m, n, nnz, dtype)
    return X, c.positive_factor(m, r, dtype, seed=1), c.positive_factor(n, r, dtype, seed=2)


def _eps(dtype, beta):
    from fastnmf._data import wh_guard
    return wh_guard(np.dtype(dtype), beta)


def _run(benchmark, func, *args):
    func(*args)                       # compile / load from cache, outside the timing
    benchmark(func, *args)


@parametrize("dtype", DTYPES)
def test_csr_times_dense(benchmark, dtype):
    from fastnmf._kernels.sparse import csr_times_dense
    X, W, Ht = _csr(dtype)
    out = np.empty_like(W)
    _run(benchmark, csr_times_dense, X.indptr, X.indices, X.data, Ht, out)
    np.testing.assert_allclose(out, X @ Ht, rtol=1e-4 if dtype == "float32" else 1e-10)


@parametrize("dtype", DTYPES)
def test_csr_kl_numerator(benchmark, dtype):
    from fastnmf._kernels.sparse import csr_kl_numerator
    X, W, Ht = _csr(dtype)
    out = np.empty_like(W)
    _run(benchmark, csr_kl_numerator, X.indptr, X.indices, X.data, W, Ht, _eps(dtype, 1.0), out)
    assert np.all(np.isfinite(out))


@parametrize("dtype", DTYPES)
def test_csr_beta_all_entries(benchmark, dtype):
    from fastnmf._kernels.sparse import csr_beta_all_entries
    X, W, Ht = _csr(dtype, c.ALL_ENTRIES_SIZES)
    T = np.dtype(dtype).type
    num, den = np.empty_like(W), np.empty_like(W)
    rows = np.empty(X.shape[0])
    _run(benchmark, csr_beta_all_entries, X.indptr, X.indices, X.data, W, Ht, T(1.5),
         _eps(dtype, 1.5), num, den, rows, True, True)
    assert np.all(np.isfinite(num)) and np.all(den > 0)


@parametrize("dtype", DTYPES)
def test_mu_apply(benchmark, dtype):
    from fastnmf._kernels.factor import mu_apply
    m, r = c.FACTOR_SIZES[SIZE]
    T = np.dtype(dtype).type
    F0 = c.positive_factor(m, r, dtype, seed=3)
    F = F0.copy()
    den = c.positive_factor(m, r, dtype, seed=4)
    num = den.copy()                  # ratio 1 (to an ulp): F stays put whatever the round count
    _run(benchmark, mu_apply, F, num, den, T(0), T(0), T(1), T(np.sqrt(np.finfo(dtype).tiny)))
    np.testing.assert_allclose(F, F0, rtol=1e-3 if dtype == "float32" else 1e-9)


@parametrize("dtype", DTYPES)
def test_hals_sweeps(benchmark, dtype):
    from fastnmf._kernels.factor import hals_sweeps
    m, r = c.FACTOR_SIZES[SIZE]
    T = np.dtype(dtype).type
    F0 = c.positive_factor(m, r, dtype, seed=3)
    F = F0.copy()
    G = c.positive_factor(4 * r, r, dtype, seed=5)
    Q = np.ascontiguousarray(G.T @ G)
    P = np.ascontiguousarray(c.positive_factor(m, r, dtype, seed=6) @ Q)

    def sweeps():                     # same start every round: fixed work
        np.copyto(F, F0)
        hals_sweeps(F, P, Q, T(0), 3, T(0))
    _run(benchmark, sweeps)
    assert np.all(F >= 0)


@parametrize("method", ["mu-frobenius", "hals-frobenius", "mu-kl"])
@parametrize("storage", ["sparse", "dense"])
def test_fit_small(benchmark, method, storage):
    import fastnmf
    X = c.fit_data(storage, "float64", small=True)
    W0, H0 = c.fit_start(storage, "float64", small=True)
    kw = dict(c.METHODS[method], init="custom", W=W0, H=H0, max_iter=c.FIT_ITERS, tol=0.0,
              eval_every=c.FIT_ITERS)

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fastnmf.nmf(X, c.FIT_RANK, **kw)
    fit()
    W, H, info = benchmark.pedantic(fit, rounds=3, iterations=1)
    assert info["n_iter"] == c.FIT_ITERS and np.isfinite(info["loss"])
