"""asv benchmarks of the Numba kernels (``fastnmf._kernels``), one call each.

Three classes, one per kernel module, each parameterized over kernel x dtype x size:

* ``SparseKernels``: the CSR products (X Ht; X^T W through the transposed CSR copy), the fused
  KL numerator and KL loss rows, the general-beta all-entries kernel (beta = 1.5: terms, loss);
* ``DenseKernels``: ``dense_times`` (X Ht, X^T W on the C-contiguous copy of X^T),
  ``dense_times_gt`` (X Ht with each block as Ht^T X_b^T), ``dense_times_transposed`` (X^T W
  from partials of X), ``dense_mu_frobenius_w`` (the one-pass MU step of W and X^T W; at the
  small and medium sizes DenseOperator would not pick it, the kernel is timed anyway),
  ``dense_mu_kl_w`` (``dense_mu_beta_w`` at beta = 1: the KL step of W and the H step's
  numerator in one pass; likewise timed at every size), the
  fused ``dense_beta_blocks`` (MU terms for KL, IS and beta = 1.5; the KL loss rows alone) and
  ``dense_cross64``. Until 093d784 ``dense_times`` computed each block as G^T A_b^T (what
  ``dense_times_gt`` does now), so its history changes there;
* ``FactorKernels``: ``mu_apply`` (gamma 1), ``mu_apply_shared`` (the KL step's shared
  denominator row), ``column_sums``, ``mu_apply_gram`` (the Frobenius step with its
  denominator made in the kernel), ``gram`` (F^T F by row blocks), ``hals_sweeps`` (3
  sweeps, fixed work; from the lane kernel's commit on it takes that kernel, before it was
  the loop kernel, so its history changes there) and ``hals_sweeps_loop`` (the loop kernel).

Each class has three benchmarks over the same parameters:

* ``time_kernel``: seconds per call (asv's usual statistics; a regression is an increase);
* ``track_gflops``: useful floating-point work per second (unit GFLOP/s);
* ``track_gbs``: compulsory memory traffic per second (unit GB/s).

The rates come from the median of repeated calls (at least 5 and 0.5 s) timed in the class's
``setup_cache``, both rates from the same timing; note that asv's compare marks any *increase*
with "+", which for a rate is an improvement. The work model of
each kernel (what one call counts as flops and bytes; s = bytes per float, i = per index, all
arrays read or written exactly once) is in ``WORK`` below and in docs/benchmarking.md. Rank r =
``_common.KERNEL_RANK``. Kernels run with all of Numba's threads; dense kernels with BLAS held
to one thread, as during a fit. Kernels that a commit does not have (the dense ones before
``d11ded9``) are skipped (asv shows "n/a"), or fail with FASTNMF_BENCH_STRICT=1 (CI).
"""
import itertools

import numba
import numpy as np

from . import _common as c

R = c.KERNEL_RANK

# kernel -> description of one call's work (flops, bytes), for the docs and the reader
WORK = {
    "csr_times_dense": "out = X @ Ht: 2 nnz r flops; nnz (s + i) + m r s + n r s bytes",
    "csr_times_dense_T": "out = X^T @ W (CSR of X^T): 2 nnz r flops; nnz (s + i) + m r s + n r s",
    "csr_times_dense_loop": "X @ Ht by the loop kernel (rows above 512 bytes, any layout): "
                            "2 nnz r flops; nnz (s + i) + m r s + n r s bytes",
    "csr_times_dense_add": "out += X @ Ht (a later panel of X^T): 2 nnz r flops; "
                           "nnz (s + i) + 2 m r s + n r s bytes",
    "csr_kl_numerator": "(X / WH) @ Ht at the nonzeros: nnz (4 r + 1) flops; "
                        "nnz (s + i) + 2 m r s + n r s bytes",
    "csr_kl_numerator_loop": "the KL numerator by the loop kernel: nnz (4 r + 1) flops; "
                             "nnz (s + i) + 2 m r s + n r s bytes",
    "csr_kl_numerator_add": "out += the KL numerator (a later panel of X^T): nnz (4 r + 1) "
                            "flops; nnz (s + i) + 3 m r s + n r s bytes",
    "csr_kl_loss_rows": "KL loss per row over the nonzeros (at this rank the fixed-rank "
                        "kernel): 2 nnz r flops; nnz (s + i) + m r s + n r s + 8 m bytes",
    "csr_kl_loss_rows_loop": "KL loss rows by the loop kernel: 2 nnz r flops; "
                             "nnz (s + i) + m r s + n r s + 8 m bytes",
    "csr_beta_tiles": "beta = 1.5 MU terms over all m n entries, in tiles of WH (two GEMMs "
                      "and m n vector powers): 4 m n r flops; nnz (s + i) + 3 m r s + "
                      "n r s bytes",
    "csr_beta_tiles_loss": "beta = 1.5 loss over all m n entries, in tiles of WH (one GEMM "
                           "and m n vector powers): 2 m n r flops; nnz (s + i) + m r s + "
                           "n r s + 8 m bytes",
    "dense_times": "out = X @ Ht by row blocks: 2 m n r flops; m n s + m r s + n r s bytes",
    "dense_times_T": "out = X^T @ W (C copy of X^T): 2 m n r flops; m n s + m r s + n r s",
    "dense_times_gt": "out = X @ Ht by row blocks, each as Ht^T X_b^T: 2 m n r flops; "
                      "m n s + m r s + n r s bytes",
    "dense_mu_frobenius_w": "Frobenius MU step of W + X^T W in one pass over X (W restored "
                            "first): 4 m n r + 2 m r^2 flops; m n s + 4 m r s + n r s bytes",
    "dense_mu_kl_w": "KL MU step of W + the H step's numerator in one pass over X (W restored "
                     "first): 8 m n r flops; m n s + 4 m r s + n r s bytes",
    "dense_times_transposed": "out = X^T @ W from X (partials per row block, summed): 2 m n r "
                              "flops; m n s + m r s + n r s",
    "dense_beta_kl": "KL MU numerator, WH per block: 4 m n r flops; m n s + 2 m r s + n r s",
    "dense_beta_is": "IS (beta = 0) MU terms: 6 m n r flops; m n s + 3 m r s + n r s bytes",
    "dense_beta_1.5": "beta = 1.5 MU terms: 6 m n r flops; m n s + 3 m r s + n r s bytes",
    "dense_beta_loss": "KL loss rows, WH per block: 2 m n r flops; m n s + m r s + n r s + 8 m",
    "dense_beta_loss_1.5": "beta = 1.5 loss rows (vector powers), WH per block: 2 m n r flops; "
                           "m n s + m r s + n r s + 8 m",
    "dense_cross64": "<W, X Ht> in float64 (Frobenius loss of float32 X): 2 m n r + 2 m r "
                     "flops; m n s + 8 (m + n) r bytes",
    "mu_apply": "F *= num / den over m x r: 4 m r flops; 4 m r s bytes",
    "gram": "F^T F by row blocks in parallel, summed in order: 2 m r^2 flops; m r s bytes",
    "mu_apply_shared": "KL MU step, one 1 x r denominator row for all rows: 4 m r flops; "
                       "3 m r s bytes",
    "column_sums": "column sums of F by row blocks in parallel (float64): m r flops; "
                   "m r s bytes",
    "mu_apply_gram": "Frobenius MU step (at this rank: den = F_i @ gram per row, r fixed): "
                     "2 m r^2 + 5 m r flops; 3 m r s + r^2 s bytes",
    "mu_apply_gram_blocks": "Frobenius MU step, den = F @ gram per 64-row block: 2 m r^2 + "
                            "5 m r flops; 3 m r s + r^2 s bytes",
    "hals_sweeps": "3 HALS sweeps over the rows of F (m x r; at this rank the lane kernel, "
                   "one row per vector lane): 3 m (2 r^2 + 4 r) flops; 3 m r s + r^2 s bytes",
    "hals_sweeps_loop": "3 HALS sweeps, the loop kernel (rows in groups of eight, their dot "
                        "products side by side): 3 m (2 r^2 + 4 r) flops; 3 m r s + r^2 s bytes",
}


def _kernel_module(name):
    """fastnmf._kernels.<name>; NotImplementedError (asv: skipped) if this commit lacks it."""
    import importlib
    try:
        return importlib.import_module(f"fastnmf._kernels.{name}")
    except ImportError as exc:
        raise c.missing(f"fastnmf._kernels.{name}: {exc}") from None


def _kernel(module, name):
    func = getattr(_kernel_module(module), name, None)
    if func is None:
        raise c.missing(f"fastnmf._kernels.{module}.{name} not in this commit")
    return func


def _eps(dtype, beta):
    try:
        from fastnmf._data import wh_guard
        return wh_guard(np.dtype(dtype), beta)
    except ImportError:
        tiny = float(np.finfo(dtype).tiny)
        return np.dtype(dtype).type(tiny ** (0.5 / max(1.0, 2.0 - beta)))


def _dense_blocks(X):
    """Rows per task of dense_times and of dense_beta_blocks for X, as fastnmf's DenseOperator
    picks them (read from the operator, so the benchmark follows the package: d11ded9 had one
    ``_block`` for both, c76a3a8 added ``_beta_block``); 64 rows if it exposes neither."""
    try:
        from fastnmf._data import DenseOperator
        op = DenseOperator(X)
    except Exception:
        return 64, 64
    block = getattr(op, "_block", {}).get("W", 64)
    beta_block = getattr(op, "_beta_block", {}).get("W", block)
    return int(block), int(beta_block)


class _KernelBench:
    """Shared machinery: ``_build`` returns (call, flops, bytes) for one parameter set.

    The rates are measured once per class in ``setup_cache`` (every parameter set in turn,
    each call compiled first), so GFLOP/s and GB/s of one parameter set come from the same
    timing; ``track_*`` read them. ``time_kernel`` is timed by asv as usual."""
    param_names = ["kernel", "dtype", "size"]
    timeout = 300
    _limits = None

    def _release(self):
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None

    def _measure_rates(self):
        """{params: (GFLOP/s, GB/s)}. Each subclass has its own ``setup_cache`` calling this:
        asv keys a setup_cache by its source line, so an inherited one would be shared."""
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        rates = {}
        for kernel, dtype, size in itertools.product(*self.params):
            try:
                call, flops, nbytes = self._build(kernel, dtype, size)
            except NotImplementedError:
                self._release()
                continue
            try:
                seconds = c.median_seconds(call)      # calls once untimed first
            finally:
                self._release()
            rates[kernel, dtype, size] = (flops / seconds / 1e9, nbytes / seconds / 1e9)
        return rates

    def setup(self, rates, kernel, dtype, size):
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        try:
            self.call, self.flops, self.nbytes = self._build(kernel, dtype, size)
        except Exception:
            self._release()
            raise
        self.call()                       # compile / load from the on-disk cache: not timed

    def teardown(self, rates, kernel, dtype, size):
        self._release()

    def time_kernel(self, rates, kernel, dtype, size):
        self.call()

    def track_gflops(self, rates, kernel, dtype, size):
        return rates[kernel, dtype, size][0]
    track_gflops.unit = "GFLOP/s"

    def track_gbs(self, rates, kernel, dtype, size):
        return rates[kernel, dtype, size][1]
    track_gbs.unit = "GB/s"


@c.with_attrs(c.KERNEL_ATTRS)
class SparseKernels(_KernelBench):
    """fastnmf._kernels.sparse on power-law CSR count matrices (_common.SPARSE_SIZES; the
    all-entries kernel on _common.ALL_ENTRIES_SIZES), r = KERNEL_RANK."""
    params = [["csr_times_dense", "csr_times_dense_T", "csr_times_dense_loop",
               "csr_times_dense_add", "csr_kl_numerator", "csr_kl_numerator_loop",
               "csr_kl_numerator_add", "csr_kl_loss_rows", "csr_kl_loss_rows_loop",
               "csr_beta_tiles", "csr_beta_tiles_loss"],
              list(c.DTYPES), list(c.KERNEL_SIZES)]

    def setup_cache(self):
        return self._measure_rates()
    setup_cache.timeout = 1800

    def _build(self, kernel, dtype, size):
        all_entries = kernel.startswith("csr_beta_tiles")
        m, n, nnz = (c.ALL_ENTRIES_SIZES if all_entries else c.SPARSE_SIZES)[size]
        X = c.sparse_counts(m, n, nnz, dtype)
        W = c.positive_factor(m, R, dtype, seed=1)
        Ht = c.positive_factor(n, R, dtype, seed=2)
        T = np.dtype(dtype).type
        s, nz = np.dtype(dtype).itemsize, X.nnz
        base = nz * (s + X.indices.itemsize) + (m + 1) * X.indptr.itemsize
        factors = (m + n) * R * s
        rows = np.empty(m, dtype=np.float64)
        if kernel in ("csr_times_dense", "csr_times_dense_loop", "csr_times_dense_add"):
            f, out = _kernel("sparse", kernel), np.zeros_like(W)
            return (lambda: f(X.indptr, X.indices, X.data, Ht, out),
                    2 * nz * R, base + factors)
        if kernel == "csr_times_dense_T":
            XT = X.T.tocsr()
            XT.sort_indices()
            f, out = _kernel("sparse", "csr_times_dense"), np.empty_like(Ht)
            return (lambda: f(XT.indptr, XT.indices, XT.data, W, out),
                    2 * nz * R, nz * (s + XT.indices.itemsize) + (n + 1) * XT.indptr.itemsize
                    + factors)
        if kernel in ("csr_kl_numerator", "csr_kl_numerator_loop", "csr_kl_numerator_add"):
            f, out, eps = _kernel("sparse", kernel), np.zeros_like(W), _eps(dtype, 1.0)
            return (lambda: f(X.indptr, X.indices, X.data, W, Ht, eps, out),
                    nz * (4 * R + 1), base + factors + m * R * s)
        if kernel in ("csr_kl_loss_rows", "csr_kl_loss_rows_loop"):
            f, eps = _kernel("sparse", kernel), _eps(dtype, 1.0)
            return (lambda: f(X.indptr, X.indices, X.data, W, Ht, eps, rows),
                    2 * nz * R, base + factors + 8 * m)
        f = _kernel("sparse", "csr_beta_tiles")
        from fastnmf._data import BETA_TILES
        # its GEMMs run single-threaded inside the Numba blocks, as during a fit (the dense
        # class explains the import)
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import threadpool_limits
        self._limits = threadpool_limits(limits=1)
        beta, eps = T(1.5), _eps(dtype, 1.5)
        if kernel == "csr_beta_tiles":
            num, den = np.empty_like(W), np.empty_like(W)
            return (lambda: f(X.indptr, X.indices, X.data, W, Ht, beta, eps, num, den, rows,
                              True, False, *BETA_TILES),
                    4 * m * n * R, base + factors + 2 * m * R * s)
        return (lambda: f(X.indptr, X.indices, X.data, W, Ht, beta, eps, W, W, rows,
                          False, True, *BETA_TILES),
                2 * m * n * R, base + factors + 8 * m)


@c.with_attrs(c.KERNEL_ATTRS)
class DenseKernels(_KernelBench):
    """fastnmf._kernels.dense on image-like matrices (_common.DENSE_SIZES; IS on the strictly
    positive variant), r = KERNEL_RANK, row blocks as DenseOperator picks them."""
    params = [["dense_times", "dense_times_T", "dense_times_gt", "dense_times_transposed",
               "dense_mu_frobenius_w", "dense_mu_kl_w", "dense_beta_kl", "dense_beta_is",
               "dense_beta_1.5", "dense_beta_loss", "dense_beta_loss_1.5", "dense_cross64"],
              list(c.DTYPES), list(c.KERNEL_SIZES)]

    def setup_cache(self):
        return self._measure_rates()
    setup_cache.timeout = 1800

    def _build(self, kernel, dtype, size):
        m, n = c.DENSE_SIZES[size]
        X = c.dense_images(m, n, dtype, positive=(kernel == "dense_beta_is"))
        W = c.positive_factor(m, R, dtype, seed=1)
        Ht = c.positive_factor(n, R, dtype, seed=2)
        T = np.dtype(dtype).type
        s = np.dtype(dtype).itemsize
        base = m * n * s + (m + n) * R * s
        block, beta_block = _dense_blocks(X)
        # BLAS inside the Numba blocks runs single-threaded, as during a fit. Numba's np.dot
        # calls SciPy's own OpenBLAS, and threadpoolctl limits only libraries already loaded:
        # load it first (fastnmf does the same since e6e7a87; older commits did not).
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import threadpool_limits
        self._limits = threadpool_limits(limits=1)
        if kernel in ("dense_times", "dense_times_T"):
            f = _kernel("dense", "dense_times")
            if kernel == "dense_times":
                out = np.empty_like(W)
                return lambda: f(X, Ht, out, block), 2 * m * n * R, base
            XT = np.ascontiguousarray(X.T)
            block_t = _dense_blocks(XT)[0]
            out = np.empty_like(Ht)
            return lambda: f(XT, W, out, block_t), 2 * m * n * R, base
        if kernel == "dense_times_gt":
            f = _kernel("dense", "dense_times_gt")
            out = np.empty_like(W)
            return lambda: f(X, Ht, out, block), 2 * m * n * R, base
        if kernel == "dense_mu_frobenius_w":
            f = _kernel("dense", "dense_mu_frobenius_w")
            from fastnmf._data import DenseOperator
            t_block = int(DenseOperator(X)._transposed_block(R)) or block
            partial = np.empty((-(-m // t_block), R, n), dtype=dtype)
            gram = np.ascontiguousarray(Ht.T @ Ht)
            Wc, out = W.copy(), np.empty_like(Ht)
            zero, one, tiny = T(0), T(1), T(np.sqrt(np.finfo(dtype).tiny))

            def step():
                np.copyto(Wc, W)
                f(X, Wc, Ht, gram, zero, zero, one, tiny, partial, out, t_block)
            return step, 4 * m * n * R + 2 * m * R * R, base + 3 * m * R * s
        if kernel == "dense_mu_kl_w":
            f = _kernel("dense", "dense_mu_beta_w")
            from fastnmf._data import DenseOperator
            t_block = int(DenseOperator(X)._transposed_block(R)) or block
            partial = np.empty((-(-m // t_block), R, n), dtype=dtype)
            Wc, num_h, den_h = W.copy(), np.empty_like(Ht), np.empty_like(Ht)
            zero, one, tiny = T(0), T(1), T(np.sqrt(np.finfo(dtype).tiny))
            eps = _eps(dtype, 1.0)

            def kl_step():
                np.copyto(Wc, W)
                f(X, Wc, Ht, one, eps, zero, zero, one, tiny, partial, partial, num_h, den_h,
                  t_block)
            return kl_step, 8 * m * n * R, base + 3 * m * R * s
        if kernel == "dense_times_transposed":   # X^T W as DenseOperator computes it
            f = _kernel("dense", "dense_times_transposed")
            try:   # the operator's block (0 where it would not use partials for this shape)
                from fastnmf._data import DenseOperator
                t_block = int(DenseOperator(X)._transposed_block(R)) or block
            except Exception:
                t_block = block
            partial = np.empty((-(-m // t_block), R, n), dtype=dtype)
            out = np.empty_like(Ht)
            return lambda: f(X, W, partial, out, t_block), 2 * m * n * R, base
        if kernel == "dense_cross64":
            f = _kernel("dense", "dense_cross64")
            W64, Ht64 = W.astype(np.float64), Ht.astype(np.float64)
            partial = np.empty((m + block - 1) // block)
            return (lambda: f(X, W64, Ht64, partial, block), 2 * m * n * R + 2 * m * R,
                    m * n * s + 8 * (m + n) * R)
        f = _kernel("dense", "dense_beta_blocks")
        rows = np.empty(m, dtype=np.float64)
        num, den = np.empty_like(W), np.empty_like(W)
        if kernel.startswith("dense_beta_loss"):
            beta = 1.5 if kernel.endswith("1.5") else 1.0
            eps = _eps(dtype, beta)
            return (lambda: f(X, W, Ht, T(beta), eps, W, W, rows, False, True, beta_block),
                    2 * m * n * R, base + 8 * m)
        beta = {"dense_beta_kl": 1.0, "dense_beta_is": 0.0, "dense_beta_1.5": 1.5}[kernel]
        eps = _eps(dtype, beta)
        flops = (4 if beta == 1.0 else 6) * m * n * R
        outs = (1 if beta == 1.0 else 2) * m * R * s
        return (lambda: f(X, W, Ht, T(beta), eps, num, den, rows, True, False, beta_block),
                flops, base + outs)


@c.with_attrs(c.KERNEL_ATTRS)
class FactorKernels(_KernelBench):
    """fastnmf._kernels.factor on an m x r factor, m = the rows of the sparse size."""
    params = [["mu_apply", "mu_apply_shared", "mu_apply_gram", "mu_apply_gram_blocks", "gram",
               "column_sums", "hals_sweeps", "hals_sweeps_loop"],
              list(c.DTYPES),
              list(c.KERNEL_SIZES)]
    sweeps = 3

    def setup_cache(self):
        return self._measure_rates()
    setup_cache.timeout = 1800

    def _build(self, kernel, dtype, size):
        m = c.SPARSE_SIZES[size][0]
        T = np.dtype(dtype).type
        s = np.dtype(dtype).itemsize
        F0 = c.positive_factor(m, R, dtype, seed=3)
        F = F0.copy()
        if kernel == "mu_apply":
            f = _kernel("factor", "mu_apply")
            den = c.positive_factor(m, R, dtype, seed=4)
            num = den.copy()              # ratio 1: F stays bounded over any number of calls
            tiny, zero, one = T(np.sqrt(np.finfo(dtype).tiny)), T(0), T(1)
            return lambda: f(F, num, den, zero, zero, one, tiny), 4 * m * R, 4 * m * R * s
        if kernel in ("mu_apply_gram", "mu_apply_gram_blocks"):
            f = _kernel("factor", kernel)
            G = c.positive_factor(4 * R, R, dtype, seed=5)
            gram = np.ascontiguousarray(G.T @ G)
            num = np.ascontiguousarray(F0 @ gram)   # ratio ~1: F stays bounded
            tiny, zero, one = T(np.sqrt(np.finfo(dtype).tiny)), T(0), T(1)
            return (lambda: f(F, num, gram, zero, zero, one, tiny),
                    2 * m * R * R + 5 * m * R, 3 * m * R * s + R * R * s)
        if kernel == "mu_apply_shared":
            f = _kernel("factor", "mu_apply_shared")
            den = c.positive_factor(1, R, dtype, seed=4)
            num = np.ascontiguousarray(np.repeat(den, m, axis=0))   # ratio 1, as mu_apply
            tiny, zero, one = T(np.sqrt(np.finfo(dtype).tiny)), T(0), T(1)
            return lambda: f(F, num, den, zero, zero, one, tiny), 4 * m * R, 3 * m * R * s
        if kernel == "gram":
            f = _kernel("factor", "gram")
            out = np.empty((R, R), dtype=dtype)
            return lambda: f(F, out), 2 * m * R * R, m * R * s
        if kernel == "column_sums":
            f = _kernel("factor", "column_sums")
            out = np.empty(R, dtype=dtype)
            return lambda: f(F, out), m * R, m * R * s
        f = _kernel("factor", kernel)
        G = c.positive_factor(4 * R, R, dtype, seed=5)
        Q = np.ascontiguousarray(G.T @ G)
        P = np.ascontiguousarray(c.positive_factor(m, R, dtype, seed=6) @ Q)
        zero, sweeps = T(0), self.sweeps

        def call():                       # same start every call: fixed work (the m x r
            np.copyto(F, F0)              # copy is small next to 3 sweeps of 2 m r^2)
            f(F, P, Q, zero, sweeps, zero)    # delta_sq = 0: never stops early
        return (call, sweeps * m * (2 * R * R + 4 * R),
                sweeps * m * R * s + R * R * s)
