"""Deterministic problem data shared by the asv suite and the pytest-benchmark file.

Every array comes from a fixed seed, so two runs (and two commits) time the same inputs.
Arrays are cached per process: asv calls ``setup`` before every repeat, and generating the
data is not what is being measured. ``FASTNMF_BENCH_QUICK=1`` (any value but "", "0") shrinks
every size so the whole suite runs in seconds.
"""
import os

import numpy as np
import scipy.sparse as sp

QUICK = os.environ.get("FASTNMF_BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")

# Kernel problem sizes: CSR matrix (m, n, nnz) and rank r. The all-entries kernel for a general
# beta costs O(m n r) per call, so it gets its own, smaller, shapes.
if QUICK:
    CSR_SIZES = {"small": (400, 300, 4_000, 8), "medium": (2_000, 1_000, 20_000, 10)}
    ALL_ENTRIES_SIZES = {"small": (100, 80, 800, 8), "medium": (400, 300, 4_000, 10)}
    FACTOR_SIZES = {"small": (1_000, 8), "medium": (5_000, 10)}
else:
    CSR_SIZES = {"small": (5_000, 2_000, 100_000, 10),
                 "medium": (50_000, 20_000, 1_000_000, 20)}
    ALL_ENTRIES_SIZES = {"small": (500, 400, 4_000, 10), "medium": (2_000, 1_000, 20_000, 20)}
    FACTOR_SIZES = {"small": (10_000, 10), "medium": (100_000, 20)}

# End-to-end fits: (m, n, nnz) for sparse counts, (m, n) for dense images, rank, iterations.
if QUICK:
    FIT_SPARSE = (1_000, 500, 10_000)
    FIT_DENSE = (400, 196)
    FIT_RANK = 5
    FIT_ITERS = 5
else:
    FIT_SPARSE = (10_000, 5_000, 200_000)
    FIT_DENSE = (2_000, 784)
    FIT_RANK = 10
    FIT_ITERS = 20

SMALL_FIT_SPARSE = (1_000, 500, 10_000) if QUICK else (2_000, 1_000, 40_000)
SMALL_FIT_DENSE = (400, 196) if QUICK else (1_000, 400)

SIZES = ("small", "medium")
DTYPES = ("float32", "float64")

_cache = {}


def _cached(key, build):
    if key not in _cache:
        _cache[key] = build()
    return _cache[key]


def random_csr(m, n, nnz, dtype, seed=0):
    """A CSR matrix with about ``nnz`` entries, power-law row lengths (like counts data),
    positive values, sorted duplicate-free indices. Deterministic for a given seed."""
    def build():
        rng = np.random.default_rng(seed)
        row_w = 1.0 / np.arange(1, m + 1) ** 0.8
        row_w = rng.permutation(row_w / row_w.sum())
        rows = rng.choice(m, size=nnz, p=row_w).astype(np.int32)
        cols = rng.integers(0, n, size=nnz, dtype=np.int32)
        vals = rng.integers(1, 5, size=nnz).astype(np.float64)
        X = sp.csr_matrix((vals, (rows, cols)), shape=(m, n))
        X.sum_duplicates()
        X.sort_indices()
        return X.astype(dtype)
    return _cached(("csr", m, n, nnz, np.dtype(dtype).name, seed), build)


def transposed_csr(X):
    """The CSR of X.T (what fastnmf keeps for W.T @ X), sorted."""
    def build():
        XT = X.T.tocsr()
        XT.sort_indices()
        return XT
    return _cached(("csrT", id(X)), build)


def positive_factor(rows, r, dtype, seed=1):
    """A dense (rows, r) C-contiguous factor with entries in [0.1, 1.1)."""
    def build():
        rng = np.random.default_rng(seed)
        return (0.1 + rng.random((rows, r))).astype(dtype)
    return _cached(("factor", rows, r, np.dtype(dtype).name, seed), build)


def fit_data(storage, dtype, small=False):
    """The matrix the end-to-end fit benchmarks factorize (``small``: the pytest-benchmark
    size, a few milliseconds per iteration)."""
    from fastnmf.datasets import make_dense_images, make_sparse_counts

    def build():
        if storage == "sparse":
            m, n, nnz = SMALL_FIT_SPARSE if small else FIT_SPARSE
            return make_sparse_counts(m, n, nnz, FIT_RANK, random_state=0, dtype=dtype)
        m, n = SMALL_FIT_DENSE if small else FIT_DENSE
        return make_dense_images(m, n, FIT_RANK, random_state=0, dtype=dtype)
    return _cached(("fit", storage, np.dtype(dtype).name, small), build)


def fit_start(storage, dtype, small=False):
    """An NNDSVDa start (W, H) for ``fit_data(storage, dtype, small)``, computed once, so the
    timed fits measure the iterations and not the SVD."""
    from fastnmf._init import initialize

    def build():
        X = fit_data(storage, dtype, small)
        W, Ht = initialize(X, FIT_RANK, "nndsvda", 0, np.dtype(dtype))
        return W, np.ascontiguousarray(Ht.T)
    return _cached(("start", storage, np.dtype(dtype).name, small), build)


# solver/loss combinations of the fit benchmarks: name -> nmf keyword arguments
METHODS = {
    "mu-frobenius": dict(solver="mu", beta_loss="frobenius"),
    "hals-frobenius": dict(solver="hals", beta_loss="frobenius"),
    "mu-kl": dict(solver="mu", beta_loss="kullback-leibler"),
    "mu-beta1.5": dict(solver="mu", beta_loss=1.5),
}
