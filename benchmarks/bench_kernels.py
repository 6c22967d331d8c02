"""asv benchmarks of the Numba kernels (fastnmf._kernels), one call each.

Every class is parameterized over dtype (float32, float64) and a small/medium problem size
(see _common.py; FASTNMF_BENCH_QUICK=1 shrinks them). Inputs are generated from fixed seeds.
Each ``setup`` calls the kernel once, so JIT compilation (or loading the on-disk cache) is not
timed. The kernels run with all of Numba's threads (NUMBA_NUM_THREADS); thread scaling is
measured end to end in bench_fit.TimeFitThreads.
"""
import numba
import numpy as np

from . import _common as c


def _kernels():
    from fastnmf._kernels import factor, sparse
    return sparse, factor


def _eps(dtype, beta):
    from fastnmf._data import wh_guard
    return wh_guard(np.dtype(dtype), beta)


class _CsrBase:
    params = [list(c.DTYPES), list(c.SIZES)]
    param_names = ["dtype", "size"]
    sizes = c.CSR_SIZES

    def _setup_csr(self, dtype, size):
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        m, n, nnz, r = self.sizes[size]
        self.X = c.random_csr(m, n, nnz, dtype)
        self.XT = c.transposed_csr(self.X)
        self.W = c.positive_factor(m, r, dtype, seed=1)
        self.Ht = c.positive_factor(n, r, dtype, seed=2)
        self.T = np.dtype(dtype).type


class TimeCsrProduct(_CsrBase):
    """X @ Ht (side W) and X.T @ W through the transposed CSR copy (side H): O(nnz r)."""

    def setup(self, dtype, size):
        self._setup_csr(dtype, size)
        self.ks = _kernels()[0]
        self.out_W = np.empty_like(self.W)
        self.out_H = np.empty_like(self.Ht)
        self.time_x_times_ht(dtype, size)
        self.time_xt_times_w(dtype, size)

    def time_x_times_ht(self, dtype, size):
        X = self.X
        self.ks.csr_times_dense(X.indptr, X.indices, X.data, self.Ht, self.out_W)

    def time_xt_times_w(self, dtype, size):
        XT = self.XT
        self.ks.csr_times_dense(XT.indptr, XT.indices, XT.data, self.W, self.out_H)


class TimeCsrKlNumerator(_CsrBase):
    """The fused KL MU numerator (X / WH at the nonzeros) @ Ht: O(nnz r), no temporary."""

    def setup(self, dtype, size):
        self._setup_csr(dtype, size)
        self.ks = _kernels()[0]
        self.eps = _eps(dtype, 1.0)
        self.out_W = np.empty_like(self.W)
        self.out_H = np.empty_like(self.Ht)
        self.rows = np.empty(self.X.shape[0], dtype=np.float64)
        self.time_side_w(dtype, size)
        self.time_side_h(dtype, size)
        self.time_kl_loss_rows(dtype, size)

    def time_side_w(self, dtype, size):
        X = self.X
        self.ks.csr_kl_numerator(X.indptr, X.indices, X.data, self.W, self.Ht, self.eps,
                                 self.out_W)

    def time_side_h(self, dtype, size):
        XT = self.XT
        self.ks.csr_kl_numerator(XT.indptr, XT.indices, XT.data, self.Ht, self.W, self.eps,
                                 self.out_H)

    def time_kl_loss_rows(self, dtype, size):
        X = self.X
        self.ks.csr_kl_loss_rows(X.indptr, X.indices, X.data, self.W, self.Ht, self.eps,
                                 self.rows)


class TimeCsrBetaAllEntries(_CsrBase):
    """General beta (here 1.5) on CSR: one pass over all m x n entries, O(m n r)."""
    sizes = c.ALL_ENTRIES_SIZES

    def setup(self, dtype, size):
        self._setup_csr(dtype, size)
        self.ks = _kernels()[0]
        self.beta = self.T(1.5)
        self.eps = _eps(dtype, 1.5)
        self.num = np.empty_like(self.W)
        self.den = np.empty_like(self.W)
        self.rows = np.empty(self.X.shape[0], dtype=np.float64)
        self.time_terms(dtype, size)
        self.time_loss(dtype, size)

    def time_terms(self, dtype, size):
        X = self.X
        self.ks.csr_beta_all_entries(X.indptr, X.indices, X.data, self.W, self.Ht, self.beta,
                                     self.eps, self.num, self.den, self.rows, True, False)

    def time_loss(self, dtype, size):
        X = self.X
        self.ks.csr_beta_all_entries(X.indptr, X.indices, X.data, self.W, self.Ht, self.beta,
                                     self.eps, self.W, self.W, self.rows, False, True)


class _FactorBase:
    params = [list(c.DTYPES), list(c.SIZES)]
    param_names = ["dtype", "size"]

    def _setup_factor(self, dtype, size):
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        m, r = c.FACTOR_SIZES[size]
        self.T = np.dtype(dtype).type
        self.F0 = c.positive_factor(m, r, dtype, seed=3)
        self.F = self.F0.copy()
        return m, r


class TimeMuApply(_FactorBase):
    """F <- F * (num / den) ** gamma over an m x r factor (num == den: F stays bounded)."""

    def setup(self, dtype, size):
        m, r = self._setup_factor(dtype, size)
        self.kf = _kernels()[1]
        self.den = c.positive_factor(m, r, dtype, seed=4)
        self.num = self.den.copy()
        self.tiny = self.T(np.sqrt(np.finfo(dtype).tiny))
        self.zero = self.T(0)
        self.time_gamma_1(dtype, size)
        self.time_gamma_half(dtype, size)

    def time_gamma_1(self, dtype, size):
        self.kf.mu_apply(self.F, self.num, self.den, self.zero, self.zero, self.T(1.0),
                         self.tiny)

    def time_gamma_half(self, dtype, size):
        self.kf.mu_apply(self.F, self.num, self.den, self.zero, self.zero, self.T(0.5),
                         self.tiny)


class TimeHalsSweeps(_FactorBase):
    """Three HALS sweeps over the rows of an m x r factor (reset to the same start first, so
    every call does the same work; the reset is an m x r copy, small next to 3 m r^2)."""
    sweeps = 3

    def setup(self, dtype, size):
        m, r = self._setup_factor(dtype, size)
        self.kf = _kernels()[1]
        G = c.positive_factor(4 * r, r, dtype, seed=5)
        self.Q = np.ascontiguousarray(G.T @ G)
        # P chosen so the optimum is interior-ish: P = F* Q for a random F*
        self.P = np.ascontiguousarray(c.positive_factor(m, r, dtype, seed=6) @ self.Q)
        self.l1 = self.T(0)
        self.delta_sq = self.T(0)   # never stop early: fixed work
        self.time_sweeps(dtype, size)

    def time_sweeps(self, dtype, size):
        np.copyto(self.F, self.F0)
        self.kf.hals_sweeps(self.F, self.P, self.Q, self.l1, self.sweeps, self.delta_sq)
