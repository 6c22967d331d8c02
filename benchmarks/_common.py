"""Deterministic problem data, sizes and helpers shared by the asv suite and pytest-benchmark.

Data are made here from fixed seeds with NumPy alone (not with ``fastnmf.datasets``), so two
commits of fastnmf are always timed on the same inputs even if the package's generators change.
Arrays are cached twice: in memory per process, and on disk (``.npz`` files under
``$FASTNMF_BENCH_CACHE``, default ``<tempdir>/fastnmf-bench-data``), because asv runs every
benchmark in a fresh process and the largest matrix takes seconds to generate. Bump
``DATA_VERSION`` when a generator changes.

``FASTNMF_BENCH_QUICK=1`` (any value but "", "0", "false", "no") shrinks every size, runs the
kernel benchmarks at one size instead of three and cuts the number of repeats, so the whole
suite runs in a few minutes on 2 cores: a smoke test, not a measurement.
"""
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import scipy.sparse as sp



def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


QUICK = _flag("FASTNMF_BENCH_QUICK")
# FASTNMF_BENCH_STRICT=1 (CI): a kernel or module missing from the package is an error instead
# of a skip. The skip exists so that older commits, which lack newer kernels, can be benchmarked.
STRICT = _flag("FASTNMF_BENCH_STRICT")
DATA_VERSION = 1
CACHE_DIR = os.environ.get("FASTNMF_BENCH_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                   "fastnmf-bench-data")

# ---------------------------------------------------------------------------------------------
# Sizes. Sparse: (m, n, nnz) power-law count matrices; dense: (m, n) image-like matrices with
# about half of the entries exactly zero. "large" is a few million nonzeros either way.
if QUICK:
    SPARSE_SIZES = {"small": (300, 200, 3_000), "medium": (1_000, 500, 10_000),
                    "large": (3_000, 1_000, 30_000)}
    DENSE_SIZES = {"small": (200, 64), "medium": (400, 196), "large": (800, 196)}
    # the general-beta CSR kernel visits all m x n entries: its own, smaller, shapes
    ALL_ENTRIES_SIZES = {"small": (100, 80, 800), "medium": (300, 200, 3_000),
                         "large": (600, 300, 9_000)}
    FIT_ITERS = 5            # iterations of a fixed-work fit
    TOL_MAX_ITER = 50        # cap of a fit to tolerance
else:
    SPARSE_SIZES = {"small": (2_000, 1_000, 40_000), "medium": (20_000, 5_000, 400_000),
                    "large": (100_000, 20_000, 3_000_000)}
    DENSE_SIZES = {"small": (1_000, 400), "medium": (4_000, 784), "large": (10_000, 784)}
    ALL_ENTRIES_SIZES = {"small": (500, 400, 4_000), "medium": (2_000, 1_000, 40_000),
                         "large": (5_000, 2_000, 200_000)}
    FIT_ITERS = 20
    TOL_MAX_ITER = 500

SIZES = ("small", "medium", "large")
KERNEL_SIZES = ("small",) if QUICK else SIZES    # the kernels' code paths do not depend on it
DTYPES = ("float32", "float64")
STORAGES = ("dense", "sparse")
FIT_RANK = 10                # rank of the fit benchmarks unless the rank is the axis
RANKS = (5, 20, 50)          # the rank axis (TimeFitRank)
KERNEL_RANK = 16             # rank of the kernel benchmarks
TOL = 1e-4                   # relative tolerance of the convergence benchmarks
THREADS = ("1", "2", "all")  # "all": every Numba thread (NUMBA_NUM_THREADS)

# solver/loss combinations: name -> fastnmf.nmf keyword arguments
METHODS = {
    "mu-frobenius": dict(solver="mu", beta_loss="frobenius"),
    "hals-frobenius": dict(solver="hals", beta_loss="frobenius"),
    "mu-kl": dict(solver="mu", beta_loss="kullback-leibler"),
    "mu-is": dict(solver="mu", beta_loss="itakura-saito"),
}
BETAS = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}

# asv sampling attributes of the end-to-end classes (a fit takes 0.1 s to seconds): fewer
# samples than asv's default (up to 10 per round, 20 s), still 2 rounds x 3-5 samples.
FIT_ATTRS = dict(rounds=1, repeat=1, warmup_time=0) if QUICK else dict(rounds=2,
                                                                        repeat=(3, 5, 10.0))
# kernels take micro- to milliseconds: asv's defaults, or a short version in quick mode
KERNEL_ATTRS = dict(rounds=1, repeat=(1, 3, 0.5), warmup_time=0) if QUICK else {}


def with_attrs(attrs):
    """Class decorator setting asv attributes (rounds, repeat, ...)."""
    def deco(cls):
        for key, value in attrs.items():
            setattr(cls, key, value)
        return cls
    return deco


# ---------------------------------------------------------------------------------------------
# caching

_memory = {}


def _disk_cached(key, build):
    """``build()`` returns a dense ndarray or a CSR matrix; cached in memory and on disk."""
    if key in _memory:
        return _memory[key]
    path = os.path.join(CACHE_DIR, f"v{DATA_VERSION}-{key}.npz")
    value = None
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                if "indptr" in f:
                    value = sp.csr_matrix((f["data"], f["indices"], f["indptr"]),
                                          shape=tuple(f["shape"]))
                else:
                    value = f["array"]
        except Exception:  # a truncated or foreign file: rebuild it
            value = None
    if value is None:
        value = build()
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            if sp.issparse(value):
                np.savez(tmp, data=value.data, indices=value.indices, indptr=value.indptr,
                         shape=np.array(value.shape))
            else:
                np.savez(tmp, array=value)
            os.replace(tmp, path)
        except OSError:  # read-only or full disk: memory cache only
            pass
    _memory[key] = value
    return value


# ---------------------------------------------------------------------------------------------
# generators (NumPy only, fixed seeds)

def sparse_counts(m, n, nnz, dtype="float64", seed=0):
    """A CSR count matrix with about ``nnz`` stored entries (duplicates summed), power-law row
    and column popularity, values 1 + Poisson of a planted rank-10 intensity; sorted indices,
    int32 index arrays, exactly what ``fastnmf`` keeps for its sparse path."""
    def build():
        rng = np.random.default_rng(seed)
        row_w = rng.permutation(1.0 / np.arange(1, m + 1) ** 0.8)
        col_w = rng.permutation(1.0 / np.arange(1, n + 1) ** 0.8)
        rows = rng.choice(m, size=nnz, p=row_w / row_w.sum()).astype(np.int32)
        cols = rng.choice(n, size=nnz, p=col_w / col_w.sum()).astype(np.int32)
        k = 10
        A = rng.gamma(0.3, 1.0, size=(m, k))
        B = rng.gamma(0.3, 1.0, size=(n, k))
        lam = np.empty(nnz)
        for s in range(0, nnz, 1 << 19):
            e = min(nnz, s + (1 << 19))
            lam[s:e] = np.einsum("ij,ij->i", A[rows[s:e]], B[cols[s:e]])
        vals = 1.0 + rng.poisson(2.0 * lam / max(lam.mean(), 1e-300))
        X = sp.csr_matrix((vals, (rows, cols)), shape=(m, n))
        X.sum_duplicates()
        X.sort_indices()
        return X.astype(dtype)
    return _disk_cached(f"sparse-{m}x{n}-{nnz}-{np.dtype(dtype).name}-s{seed}", build)


def dense_images(m, n, dtype="float64", positive=False, seed=0):
    """A dense C-contiguous (m, n) matrix like flattened images: smooth Gaussian blobs mixed
    non-negatively (rank 10), scaled to max 1. ``positive=False``: about half of the entries
    are exactly 0; ``positive=True``: all entries in [0.01, 1.01] (for Itakura-Saito)."""
    def build():
        rng = np.random.default_rng(seed)
        side = int(np.ceil(np.sqrt(n)))
        yy, xx = np.mgrid[0:side, 0:side] / side
        k = 10
        parts = np.empty((k, n))
        for t in range(k):
            cx, cy, s = rng.random(), rng.random(), 0.05 + 0.15 * rng.random()
            parts[t] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)).ravel()[:n]
        X = rng.gamma(0.5, 1.0, size=(m, k)) @ parts
        if positive:
            X = X / X.max() + 0.01
        else:
            X -= np.median(X)
            np.maximum(X, 0, out=X)
            X /= X.max()
        return np.ascontiguousarray(X, dtype=dtype)
    tag = "pos" if positive else "img"
    return _disk_cached(f"dense-{tag}-{m}x{n}-{np.dtype(dtype).name}-s{seed}", build)


def positive_factor(rows, r, dtype="float64", seed=1, scale=1.0):
    """A dense (rows, r) C-contiguous factor with entries in scale * [0.5, 1.5), placed in
    memory the way the commit's own fits place their factors (cache-line aligned since
    ``fastnmf._memory.aligned_copy`` exists), so that kernel timings are those of a fit."""
    key = ("factor", rows, r, np.dtype(dtype).name, seed, scale)
    if key not in _memory:
        rng = np.random.default_rng(seed)
        F = np.ascontiguousarray(scale * (0.5 + rng.random((rows, r))), dtype=dtype)
        try:
            from fastnmf._memory import aligned_copy
        except ImportError:   # an older commit: its fits used NumPy's placement
            aligned_copy = None
        _memory[key] = F if aligned_copy is None else aligned_copy(F)
    return _memory[key]


# ---------------------------------------------------------------------------------------------
# fit problems

def fit_data(storage, size="medium", dtype="float64", method=None):
    """The matrix an end-to-end benchmark factorizes. Itakura-Saito needs X > 0 everywhere, so
    "mu-is" gets the strictly positive variant of the dense matrix (and has no sparse case)."""
    if storage == "sparse":
        if method == "mu-is":
            raise NotImplementedError("Itakura-Saito needs X > 0: no sparse case")
        return sparse_counts(*SPARSE_SIZES[size], dtype=dtype)
    return dense_images(*DENSE_SIZES[size], dtype=dtype, positive=(method == "mu-is"))


def fit_start(X, r):
    """A fixed positive start (W, H) at the scale of X: entries sqrt(mean(X) / r) * [0.5, 1.5).
    Computed here (not by fastnmf's init) so every commit starts from the same point."""
    m, n = X.shape
    mean = float(X.sum(dtype=np.float64)) / (m * n)
    scale = float(np.sqrt(mean / r))
    W = positive_factor(m, r, X.dtype, seed=11, scale=scale)
    H = np.ascontiguousarray(positive_factor(n, r, X.dtype, seed=12, scale=scale).T)
    return W, H


def missing(what):
    """The exception for a kernel or module this commit of fastnmf does not have: asv skips a
    benchmark whose setup raises NotImplementedError; FASTNMF_BENCH_STRICT=1 makes it fail."""
    if STRICT:
        return RuntimeError(f"{what} (FASTNMF_BENCH_STRICT=1)")
    return NotImplementedError(what)


def n_threads_arg(threads):
    """The ``n_threads`` argument for a thread-axis value ("1", "2", "all"); raises
    NotImplementedError (asv: skipped) when the machine has fewer threads."""
    import numba
    if threads == "all":
        return None
    n = int(threads)
    if n > numba.config.NUMBA_NUM_THREADS:
        raise NotImplementedError(f"{n} threads > NUMBA_NUM_THREADS")
    return n


def nmf(X, r, **kw):
    """fastnmf.nmf with ConvergenceWarning (max_iter hit on purpose) silenced."""
    import fastnmf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastnmf.nmf(X, r, **kw)


def fixed_work(method, X, r=FIT_RANK, n_threads=None, iters=None):
    """Keyword arguments of a fixed-work fit: the fixed start, ``iters`` (default FIT_ITERS)
    iterations, tol=0, the loss evaluated at the start and at the end only."""
    W, H = fit_start(X, r)
    iters = iters or FIT_ITERS
    return dict(METHODS[method], init="custom", W=W, H=H, max_iter=iters, tol=0.0,
                eval_every=iters, n_threads=n_threads)


def squared_error(X, W, H):
    """(||X - W H||_F^2, ||X||_F^2) in float64 through the Gram identity
    ||X||^2 - 2 <W, X H^T> + <W^T W, H H^T> (no m x n temporary), independent of fastnmf."""
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    if sp.issparse(X):
        X64 = X.astype(np.float64)
        xx = float(X64.data @ X64.data)
    else:
        X64 = np.asarray(X, dtype=np.float64)
        xx = float(np.vdot(X64, X64))
    cross = float(np.vdot(W, np.asarray(X64 @ H.T)))
    model = float(np.sum((W.T @ W) * (H @ H.T)))
    return max(xx - 2.0 * cross + model, 0.0), xx


def relative_error(X, W, H):
    """||X - W H||_F / ||X||_F in float64 (``squared_error``)."""
    sq, xx = squared_error(X, W, H)
    return float(np.sqrt(sq / xx))


# ---------------------------------------------------------------------------------------------
# rates

def median_seconds(func, min_time=0.5 if not QUICK else 0.02, min_calls=5, max_calls=1000):
    """Median wall time of ``func()`` over at least ``min_calls`` calls and ``min_time``
    seconds (``func`` is called once first, untimed)."""
    func()
    times = []
    stop = time.perf_counter() + min_time
    while len(times) < min_calls or (time.perf_counter() < stop and len(times) < max_calls):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
