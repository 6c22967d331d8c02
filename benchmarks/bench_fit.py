"""asv benchmarks of whole fits through the public API (fastnmf.nmf).

- ``time_*``: fixed work, ``max_iter=N, tol=0`` (N = _common.FIT_ITERS) from one NNDSVDa
  start computed in setup, over method (solver/loss), storage (dense/sparse) and dtype; over
  n_threads; and the initializations alone.
- ``track_*``: objective after N iterations relative to the start; iterations and seconds to
  reach ``tol=1e-4``.
- ``peakmem_*``: peak resident memory of a fit (includes the data and the interpreter).
- ``timeraw_*``: a fresh interpreter: import fastnmf, then the first small fit (JIT cache
  loading or compiling included: "compile time is user time").

Data: fastnmf.datasets.make_sparse_counts / make_dense_images with fixed seeds, sizes in
_common.py (FASTNMF_BENCH_QUICK=1 shrinks them). ``setup`` runs the timed fit once so JIT
compilation is not timed. The general-beta case (beta = 1.5) runs on dense data only: on
sparse data it costs O(m n r) per iteration (its kernel is in bench_kernels).
"""
import os
import warnings

import numba
import numpy as np

from . import _common as c

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nmf(X, **kw):
    import fastnmf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning when max_iter is hit on purpose
        return fastnmf.nmf(X, c.FIT_RANK, random_state=0, **kw)


def _check_method(method, storage):
    if method == "mu-beta1.5" and storage == "sparse":
        raise NotImplementedError("general beta on sparse data: see bench_kernels")


def _fixed_work(method, storage, dtype, n_threads=None):
    """Keyword arguments of a fixed-work fit: custom NNDSVDa start, N iterations, tol=0, the
    loss evaluated at the start and the end only."""
    W, H = c.fit_start(storage, dtype)
    return dict(c.METHODS[method], init="custom", W=W, H=H, max_iter=c.FIT_ITERS, tol=0.0,
                eval_every=c.FIT_ITERS,
                n_threads=n_threads or numba.config.NUMBA_NUM_THREADS)


class TimeFit:
    """Seconds for N iterations from a given start (input checks, operator setup, the first
    and last loss included; the initialization is not: see TimeInit)."""
    params = [list(c.METHODS), ["dense", "sparse"], list(c.DTYPES)]
    param_names = ["method", "storage", "dtype"]
    timeout = 300

    def setup(self, method, storage, dtype):
        _check_method(method, storage)
        self.X = c.fit_data(storage, dtype)
        self.kw = _fixed_work(method, storage, dtype)
        self.time_fit(method, storage, dtype)

    def time_fit(self, method, storage, dtype):
        _nmf(self.X, **self.kw)


class TimeFitThreads:
    """Thread scaling: the same fit with 1 .. NUMBA_NUM_THREADS threads (sparse, float64)."""
    params = [["mu-frobenius", "hals-frobenius", "mu-kl"],
              sorted({1, 2, numba.config.NUMBA_NUM_THREADS})]
    param_names = ["method", "n_threads"]
    timeout = 300

    def setup(self, method, n_threads):
        if n_threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError("more threads than NUMBA_NUM_THREADS")
        self.X = c.fit_data("sparse", "float64")
        self.kw = _fixed_work(method, "sparse", "float64", n_threads)
        self.time_fit(method, n_threads)

    def time_fit(self, method, n_threads):
        _nmf(self.X, **self.kw)


class TimeInit:
    """The initializations alone (fastnmf._init.initialize), float64."""
    params = [["nndsvda", "random"], ["dense", "sparse"]]
    param_names = ["init", "storage"]
    timeout = 300

    def setup(self, init, storage):
        from fastnmf._init import initialize
        self.initialize = initialize
        self.X = c.fit_data(storage, "float64")
        self.time_init(init, storage)

    def time_init(self, init, storage):
        self.initialize(self.X, c.FIT_RANK, init, 0, self.X.dtype)


class TrackLoss:
    """Objective after N iterations divided by the objective at the start (lower is better).
    A change here with no code change to the solver means the iterates changed."""
    params = [list(c.METHODS), ["dense", "sparse"], list(c.DTYPES)]
    param_names = ["method", "storage", "dtype"]
    unit = "relative objective"
    timeout = 300

    def setup(self, method, storage, dtype):
        _check_method(method, storage)
        self.X = c.fit_data(storage, dtype)

    def track_relative_loss(self, method, storage, dtype):
        _, _, info = _nmf(self.X, **_fixed_work(method, storage, dtype))
        return info["loss"] / info["loss_history"][0]


class TrackToTolerance:
    """Iterations and seconds to a relative decrease below tol=1e-4 (max 500 iterations;
    sparse float64, loss evaluated every iteration)."""
    params = [["mu-frobenius", "hals-frobenius", "mu-kl"]]
    param_names = ["method"]
    timeout = 600

    def setup(self, method):
        self.X = c.fit_data("sparse", "float64")
        W, H = c.fit_start("sparse", "float64")
        self.kw = dict(c.METHODS[method], init="custom", W=W, H=H, tol=1e-4,
                       max_iter=50 if c.QUICK else 500, eval_every=1)
        _nmf(self.X, **dict(self.kw, max_iter=2))   # compile outside the measurement

    def track_iterations(self, method):
        return _nmf(self.X, **self.kw)[2]["n_iter"]
    track_iterations.unit = "iterations"

    def track_seconds(self, method):
        return _nmf(self.X, **self.kw)[2]["elapsed"]
    track_seconds.unit = "seconds"


class PeakMemFit:
    """Peak resident memory of a fit: data, transposed copy, factors and buffers."""
    params = [["mu-frobenius", "hals-frobenius", "mu-kl"], ["dense", "sparse"]]
    param_names = ["method", "storage"]
    timeout = 300

    def setup(self, method, storage):
        self.X = c.fit_data(storage, "float64")
        self.kw = dict(c.METHODS[method], init="nndsvda", max_iter=c.FIT_ITERS, tol=0.0)

    def peakmem_fit(self, method, storage):
        _nmf(self.X, **self.kw)


_IMPORT = f"""
import sys
try:
    import fastnmf
except ImportError:
    sys.path.insert(0, {_REPO!r})
    import fastnmf
"""

_FIRST_FIT = _IMPORT + """
import warnings
from fastnmf.datasets import make_sparse_counts, make_dense_images
X = {data}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fastnmf.nmf(X, 5, solver={solver!r}, beta_loss={loss!r}, max_iter=5, tol=0,
                random_state=0)
"""


def timeraw_import():
    """A fresh interpreter running ``import fastnmf`` (numba, scipy and the kernels' modules;
    kernels compile lazily, on first call)."""
    return _IMPORT
timeraw_import.timeout = 120


class TimerawFirstFit:
    """A fresh interpreter: import fastnmf, make a tiny problem, run a 5-iteration fit. With
    a warm on-disk Numba cache this is the cost of loading the cached kernels; after a kernel
    change, of compiling them."""
    params = [["mu-frobenius", "hals-frobenius", "mu-kl"], ["dense", "sparse"]]
    param_names = ["method", "storage"]
    timeout = 600

    def timeraw_first_fit(self, method, storage):
        kw = c.METHODS[method]
        data = ("make_sparse_counts(300, 200, 3000, 5)" if storage == "sparse"
                else "make_dense_images(200, 64, 5)")
        return _FIRST_FIT.format(data=data, solver=kw["solver"], loss=kw["beta_loss"])
