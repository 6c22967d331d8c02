"""asv benchmarks of whole fits through the public API (``fastnmf.nmf``).

One class per axis, so the cross product stays small (sizes, ranks and iteration counts are in
_common.py; ``FASTNMF_BENCH_QUICK=1`` shrinks them). Methods are solver/loss pairs:
``mu-frobenius``, ``hals-frobenius``, ``mu-kl``, ``mu-is`` (Itakura-Saito needs X > 0: dense
only, on a strictly positive matrix).

==================  ===============================================  ==========================
class               axes                                             fixed
==================  ===============================================  ==========================
TimeFitSize         method (4) x storage x size (small/medium/large)  float64, r = 10, all thr.
TimeFitDtype        method (3) x storage x dtype (float32/float64)    medium, r = 10, all thr.
TimeFitRank         method (3) x storage x rank (5/20/50)             medium, float64, all thr.
TimeFitThreads      method (3) x storage x threads (1/2/all)          medium, float64, r = 10
TimeInit            init (nndsvda/random) x storage                   medium, float64, r = 10
TrackConvergence    method (4) x storage                              medium, float64, r = 10
PeakMemFit          method (3) x storage                              large, float64, r = 10
TimerawFirstFit     method (2) x storage x numba_cache (3)            tiny problem, new process
timeraw_import      -                                                 new process
==================  ===============================================  ==========================

- ``time_*``: fixed work, ``max_iter=N, tol=0`` (N = FIT_ITERS) from a fixed start computed in
  the benchmark (so every commit starts from the same point); the loss is evaluated at the
  start and at the end only. ``setup`` runs the timed fit once: JIT compilation (or loading the
  on-disk cache) is never timed.
- ``track_*``: convergence (TrackConvergence): the objective after N iterations relative to the
  start, the relative error ||X - WH||_F / ||X||_F after N iterations, and the iterations,
  seconds and final relative error of a fit to ``tol=1e-4`` (max TOL_MAX_ITER iterations,
  loss evaluated every iteration). Computed once per commit in ``setup_cache`` (each fit after
  a warm-up fit that compiles its kernels), then read by the ``track_*`` methods.
- ``peakmem_*``: peak resident memory of the benchmark process during a fit (the data, the
  interpreter and the libraries included).
- ``timeraw_*``: a fresh interpreter imports fastnmf and runs its first small fit, with the
  on-disk Numba cache warm (populated by ``setup``) or cold (``NUMBA_CACHE_DIR`` pointed at a
  new empty directory for every sample: all kernels compile).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numba

from . import _common as c

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS3 = ["mu-frobenius", "hals-frobenius", "mu-kl"]


class _FitBench:
    """setup: data, fixed start, one untimed fit; time_fit: the same fit."""
    timeout = 600

    def _prepare(self, method, storage, size="medium", dtype="float64", r=c.FIT_RANK,
                 threads="all"):
        self.X = c.fit_data(storage, size, dtype, method)
        self.kw = c.fixed_work(method, self.X, r, n_threads=c.n_threads_arg(threads))
        self.r = r
        self.time_fit()

    def time_fit(self, *params):
        c.nmf(self.X, self.r, **self.kw)


@c.with_attrs(c.FIT_ATTRS)
class TimeFitSize(_FitBench):
    """Fixed work (N iterations) over the three sizes (float64, r = 10, all threads)."""
    params = [list(c.METHODS), list(c.STORAGES), list(c.SIZES)]
    param_names = ["method", "storage", "size"]

    def setup(self, method, storage, size):
        self._prepare(method, storage, size=size)


@c.with_attrs(c.FIT_ATTRS)
class TimeFitDtype(_FitBench):
    """Fixed work in float32 and float64 (medium size, r = 10, all threads)."""
    params = [METHODS3, list(c.STORAGES), list(c.DTYPES)]
    param_names = ["method", "storage", "dtype"]

    def setup(self, method, storage, dtype):
        self._prepare(method, storage, dtype=dtype)


@c.with_attrs(c.FIT_ATTRS)
class TimeFitRank(_FitBench):
    """Fixed work at ranks 5, 20, 50 (medium size, float64, all threads)."""
    params = [METHODS3, list(c.STORAGES), list(c.RANKS)]
    param_names = ["method", "storage", "rank"]

    def setup(self, method, storage, rank):
        self._prepare(method, storage, r=rank)


@c.with_attrs(c.FIT_ATTRS)
class TimeFitThreads(_FitBench):
    """Thread scaling: n_threads = 1, 2 and all (None) of Numba's threads (medium, float64,
    r = 10). "2" is skipped on a machine with one thread; on 2 cores "2" and "all" agree."""
    params = [METHODS3, list(c.STORAGES), list(c.THREADS)]
    param_names = ["method", "storage", "threads"]

    def setup(self, method, storage, threads):
        self._prepare(method, storage, threads=threads)


@c.with_attrs(c.FIT_ATTRS)
class TimeInit:
    """The initializations alone (fastnmf._init.initialize; medium, float64, r = 10)."""
    params = [["nndsvda", "random"], list(c.STORAGES)]
    param_names = ["init", "storage"]
    timeout = 300

    def setup(self, init, storage):
        try:
            from fastnmf._init import initialize
        except ImportError:
            raise c.missing("fastnmf._init.initialize not in this commit") from None
        self.initialize = initialize
        self.X = c.fit_data(storage)
        self.time_init(init, storage)

    def time_init(self, init, storage):
        self.initialize(self.X, c.FIT_RANK, init, 0, self.X.dtype)


class TrackConvergence:
    """Convergence of each method from the fixed start (medium, float64, r = 10).

    - ``track_loss_after_n``: objective after N = FIT_ITERS iterations / objective at start;
    - ``track_relative_error_after_n``: ||X - WH||_F / ||X||_F after N iterations;
    - ``track_iterations_to_tol`` / ``track_seconds_to_tol``: to a relative decrease below
      tol = 1e-4 between two iterations (at most TOL_MAX_ITER iterations);
    - ``track_relative_error_at_tol``: ||X - WH||_F / ||X||_F where that fit stopped.

    A change in a loss or an iteration count with no solver change means the iterates changed.
    """
    params = [list(c.METHODS), list(c.STORAGES)]
    param_names = ["method", "storage"]
    timeout = 1800

    def setup_cache(self):
        results = {}
        for method in c.METHODS:
            for storage in c.STORAGES:
                try:
                    X = c.fit_data(storage, "medium", "float64", method)
                except NotImplementedError:
                    continue
                kw = c.fixed_work(method, X)
                c.nmf(X, c.FIT_RANK, **dict(kw, max_iter=2, eval_every=1))   # compile
                W, H, info = c.nmf(X, c.FIT_RANK, **kw)
                tol_kw = dict(kw, tol=c.TOL, max_iter=c.TOL_MAX_ITER, eval_every=1)
                t0 = time.perf_counter()
                Wt, Ht, info_t = c.nmf(X, c.FIT_RANK, **tol_kw)
                seconds = time.perf_counter() - t0
                results[method, storage] = {
                    "loss_after_n": info["loss"] / info["loss_history"][0],
                    "relative_error_after_n": c.relative_error(X, W, H),
                    "iterations_to_tol": info_t["n_iter"],
                    "seconds_to_tol": seconds,
                    "relative_error_at_tol": c.relative_error(X, Wt, Ht),
                }
        return results

    def setup(self, results, method, storage):
        if (method, storage) not in results:
            raise NotImplementedError("Itakura-Saito needs X > 0: no sparse case")

    def track_loss_after_n(self, results, method, storage):
        return results[method, storage]["loss_after_n"]
    track_loss_after_n.unit = "objective / start objective"

    def track_relative_error_after_n(self, results, method, storage):
        return results[method, storage]["relative_error_after_n"]
    track_relative_error_after_n.unit = "relative error"

    def track_iterations_to_tol(self, results, method, storage):
        return results[method, storage]["iterations_to_tol"]
    track_iterations_to_tol.unit = "iterations"

    def track_seconds_to_tol(self, results, method, storage):
        return results[method, storage]["seconds_to_tol"]
    track_seconds_to_tol.unit = "seconds"

    def track_relative_error_at_tol(self, results, method, storage):
        return results[method, storage]["relative_error_at_tol"]
    track_relative_error_at_tol.unit = "relative error"


class PeakMemFit:
    """Peak resident memory of the process during a fixed-work fit at the large size: data,
    transposed copy, factors, buffers, plus the interpreter and libraries (~150-250 MB)."""
    params = [METHODS3, list(c.STORAGES)]
    param_names = ["method", "storage"]
    timeout = 600

    def setup(self, method, storage):
        self.X = c.fit_data(storage, "large", "float64", method)
        self.kw = c.fixed_work(method, self.X)
        self.peakmem_fit(method, storage)

    def peakmem_fit(self, method, storage):
        c.nmf(self.X, c.FIT_RANK, **self.kw)


# ---------------------------------------------------------------------------------------------
# cold start: a new interpreter per sample

_IMPORT = f"""
import sys
try:
    import fastnmf
except ImportError:   # an uninstalled checkout
    sys.path.insert(0, {_REPO!r})
    import fastnmf
"""

_FIRST_FIT = _IMPORT + """
import warnings
import numpy as np
import scipy.sparse as sp
rng = np.random.default_rng(0)
X = {data}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fastnmf.nmf(X, {rank}, solver={solver!r}, beta_loss={loss!r}, max_iter=5, tol=0,
                random_state=0)
"""

_DATA = {
    "dense": "rng.random((200, 64))",
    "sparse": "sp.csr_matrix((rng.integers(1, 5, 3000).astype(float), (rng.integers(0, 300, "
              "3000), rng.integers(0, 200, 3000))), shape=(300, 200))",
}


def timeraw_import():
    """A fresh interpreter running ``import fastnmf`` (numpy, scipy, numba, the kernel
    modules; kernels compile lazily, on their first call)."""
    return _IMPORT


timeraw_import.timeout = 120


class TimerawFirstFit:
    """A fresh interpreter: import fastnmf, make a tiny problem, run a 5-iteration fit.

    numba_cache = "warm": the on-disk Numba cache is populated (``setup`` runs the same code
    once in a subprocess): the cost of import + loading the cached kernels.
    numba_cache = "cold": ``NUMBA_CACHE_DIR`` is a new empty directory for every sample (set
    in the untimed part of the child), so every kernel the fit needs compiles.
    numba_cache = "new-rank": every sample gets a copy of a cache populated by the same fit at
    rank 5 (untimed) and fits at rank 7: what each new rank of a rank selection costs (a
    problem this small compiles nothing per rank since ``_data.RANK_KERNEL_MIN_WORK``).
    """
    params = [["hals-frobenius", "mu-kl"], list(c.STORAGES), ["warm", "cold", "new-rank"]]
    param_names = ["method", "storage", "numba_cache"]
    timeout = 600
    if c.QUICK:
        rounds, repeat = 1, 1
    else:
        rounds, repeat = 2, (2, 5, 30.0)

    def setup(self, method, storage, numba_cache):
        self.tmp = tempfile.mkdtemp(prefix="fastnmf-bench-numba-")
        if numba_cache == "warm":         # populate the default on-disk cache, untimed
            stmt = self.timeraw_first_fit(method, storage, numba_cache)[0]
            subprocess.run([sys.executable, "-c", stmt], check=True)
        elif numba_cache == "new-rank":   # a cache of the rank-5 fit, copied per sample
            stmt = self.timeraw_first_fit(method, storage, "warm")[0]
            env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(self.tmp, "rank5"))
            subprocess.run([sys.executable, "-c", stmt], check=True, env=env)

    def teardown(self, method, storage, numba_cache):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def timeraw_first_fit(self, method, storage, numba_cache):
        kw = c.METHODS[method]
        stmt = _FIRST_FIT.format(data=_DATA[storage], solver=kw["solver"],
                                 loss=kw["beta_loss"], rank=7 if numba_cache == "new-rank" else 5)
        if numba_cache == "warm":
            return stmt, ""
        if numba_cache == "new-rank":
            rank5 = os.path.join(self.tmp, "rank5")
            setup = ("import os, shutil, tempfile\n"
                     f"cache = os.path.join(tempfile.mkdtemp(dir={self.tmp!r}), 'cache')\n"
                     f"shutil.copytree({rank5!r}, cache)\n"
                     "os.environ['NUMBA_CACHE_DIR'] = cache\n")
            return stmt, setup
        setup = ("import os, tempfile\n"
                 f"os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(dir={self.tmp!r})\n")
        return stmt, setup
