"""Data operators: the few products every algorithm needs, decided once per storage format.

Solvers see ``X`` only through an operator. Factors are stored as ``W`` (m x r) and
``Ht = H.T`` (n x r), both C-contiguous, so updating H is updating W on the transposed
problem: each method takes ``side`` = "W" (products with X, result m x r) or "H" (products with
X.T, result n x r), and ``F`` / ``G`` denote (W, Ht) or (Ht, W) respectively.

- ``product(side, G, out)``:        X @ Ht   or  X.T @ W
- ``beta_terms(side, F, G, beta, num, den)``: the MU numerator (A o (FG^T)^(beta-2)) G and
  denominator (FG^T)^(beta-1) G, beta != 2; for beta = 1 ``den`` is 1 x r, the column sums
  of G (the denominator of every row)
- ``loss(W, Ht, beta, cross_from)``: D_beta(X | W Ht^T) in float64, never forming an m x n
  product for sparse X (Gram identity for beta = 2, column sums for beta = 1).
"""
import os

import numpy as np
import scipy.sparse as sp

from ._kernels import dense as kd
from ._kernels import sparse as ks
from ._kernels.factor import column_sums


def wh_guard(dtype, beta):
    """Smallest value WH may take inside the beta terms: keeps x * wh^(beta-2) finite.

    sqrt(tiny) for beta >= 1 (so x / wh cannot overflow for x < 1/sqrt(tiny)), and
    tiny^(1/(2(2-beta))) for beta < 1 (so wh^(beta-2) <= 1/sqrt(tiny)).
    """
    tiny = float(np.finfo(dtype).tiny)
    power = 0.5 / max(1.0, 2.0 - float(beta))
    return dtype.type(tiny**power)


# (rows, columns) of the tiles of WH in the general-beta CSR kernel (ks.csr_beta_tiles): a
# float64 tile of 256 KiB stays in L2 through its passes, and 32 rows amortize the GEMMs'
# packing of the tile's G rows. Measured on the 50k problem (2 threads; ms per 1e8 entries,
# float64 / float32): (32, 1024) 237-244 / 182-185; whole rows 309-400 / 203-230; blocks of
# 2-8 whole rows 425-450 (packing). Measured with the exp(a log x) power.
BETA_TILES = (32, 1024)


# The rank-specialized kernels (``_kernels._fixed_rank``: the CSR products, KL numerator and
# KL loss, the per-row MU step, the HALS lane sweeps) are compiled at the first fit at each new
# rank r (1.3-3.2 s per method), then cached on disk: with the cache warm for other ranks, a
# small KL and HALS fit at a new rank took 5.1 s. A problem whose work per iteration,
# nnz * r (the products) + (m + n) * r^2 (the factor steps), is below this limit uses only
# code compiled once for every r (the loop kernels' shared copy, ``RowKernel.shared``, and
# the GEMM-block MU step): 0.6 s. What that costs per iteration, rank kernels -> shared code,
# 2 threads: at the limit (12,000 x 5,000, 264k nonzeros, r = 16) MU 0.82 -> 1.00 ms, KL
# 0.99 -> 1.38, HALS 1.02 -> 1.51 (float64; float32 0.54 -> 0.77, 0.76 -> 1.05, 0.70 ->
# 1.36); tall and very sparse (200,000 x 20,000, 210k nonzeros, r = 5) 2.35 -> 3.32, 3.17 ->
# 3.81, 3.30 -> 4.79 ms. A 200-iteration fit below the limit gives up at most about 0.3 s.
# Many fits of small matrices at one rank would rather pay the one compile: the environment
# variable FASTNMF_RANK_KERNEL_MIN_WORK, read at import, sets the limit (0: always).
def _min_work_from_env(default):
    value = os.environ.get("FASTNMF_RANK_KERNEL_MIN_WORK", "").strip()
    if not value:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError(f"FASTNMF_RANK_KERNEL_MIN_WORK={value!r} must be a non-negative "
                         "integer (the work nnz * r + (m + n) * r^2 from which fits use the "
                         "rank-specialized kernels; 0: always).")
    return limit


RANK_KERNEL_MIN_WORK = _min_work_from_env(1 << 23)


class _Operator:
    def rank_kernels(self, r):
        """Whether this problem's fits at rank r use the rank-specialized kernels: where its
        work nnz * r + (m + n) * r^2 reaches ``RANK_KERNEL_MIN_WORK``. The same rule for
        dense and CSR storage (nnz counts nonzero values in both), and decided by the
        problem alone, never by what happens to be compiled, so a fit's result does not
        depend on earlier fits."""
        m, n = self.shape
        return self.nnz * r + (m + n) * r * r >= RANK_KERNEL_MIN_WORK

    def frobenius_loss(self, W, Ht, cross_from=None):
        """0.5 ||X - W Ht^T||^2 = 0.5 (||X||^2 - 2 <W, X Ht> + <W^T W, Ht^T Ht>), in float64.
        ``cross_from`` = (F, P) with <F, P> = <W, X Ht>, when the caller already has the
        product P (then no product with X); used only for float64 data, where it is exact
        enough, so a float32 fit never pays for a float64 copy of F and P.

        The identity subtracts numbers of the size of ||X||^2 to get a loss that can be 1e-5
        of it, so every term must be float64-accurate: for float32 data a float32 X Ht (and
        any ``cross`` made from one) would put its 1e-7 rounding x 1e5 into the loss (9% off
        on the 50k x 20k benchmark problem). float32 X is multiplied with float64 factors.
        """
        W64 = W.astype(np.float64, copy=False)
        H64 = Ht.astype(np.float64, copy=False)
        if self.dtype != np.float64:
            cross = self.cross64(W64, H64)
        elif cross_from is not None:
            cross = float(np.vdot(*cross_from))
        else:
            cross = float(np.vdot(W64, self.product("W", H64, np.empty_like(W64))))
        quad = float(np.sum((W64.T @ W64) * (H64.T @ H64)))
        return max(0.5 * (self.sq_norm - 2.0 * cross + quad), 0.0)


    def mu_w_step_one_pass(self, W, Ht, beta, gram, l1, l2, gamma, tiny, num_h, den_h):
        """The MU step of W and the H step's terms (num_h; den_h for beta != 2, None for
        beta = 2) in one pass over X, where an operator can do that; returns False (nothing
        done) here: the solver then takes two passes. ``gram`` = Ht^T Ht for beta = 2."""
        return False


# X^T in column panels (``transposed_panels``): about this many bytes of W's rows per panel,
# and only while X^T W, re-read and re-written once per panel, stays within the second bound
PANEL_BYTES = 6 << 20
PANEL_OUT_BYTES = 16 << 20


def panel_count(m, n, G, by_rank=True):
    """How many column panels of X^T (m x n X) the products with the m x r factor ``G``
    run over. One unless G's rows take the fixed-rank kernels and G is larger than a panel:
    then ceil(G's bytes / PANEL_BYTES), so that a panel's rows of G stay in L3 while X^T W
    (n x r) is re-read and re-written per panel; one again when X^T W exceeds
    PANEL_OUT_BYTES. Measured on the Zen 4 host (300k x 50k, r = 32, X^T W): float64 8-16
    panels 1.64-1.65x, float32 8 panels 1.26x; 50k x 20k, r = 20: float64 2 panels 1.13x,
    float32 (W of 4 MB) none. One where not ``by_rank`` (``_Operator.rank_kernels``)."""
    if not (by_rank and ks.fixed_rank_rows(G)) or n * G.shape[1] * G.itemsize > PANEL_OUT_BYTES:
        return 1
    return max(1, min(-(-G.nbytes // PANEL_BYTES), m))


def transposed_panels(X, count):
    """X^T (n x m) as ``count`` CSR matrices (indptr, indices, data) over consecutive, equal
    ranges of X's rows, which are X^T's columns; column indices stay global and sorted, so a
    row of X^T is the concatenation of its rows in the panels, in order. The panels share one
    indices and one data array (together X^T's size), each made from a slice of X."""
    m, n = X.shape
    if count == 1:
        XT = X.T.tocsr()
        XT.sort_indices()
        return [(XT.indptr, XT.indices, XT.data)]
    index = np.int32 if max(m, n, X.nnz) < 2**31 else np.int64
    indices = np.empty(X.nnz, dtype=index)
    data = np.empty(X.nnz, dtype=X.dtype)
    edges = np.linspace(0, m, count + 1).astype(np.int64)
    panels, pos = [], 0
    for a, b in zip(edges[:-1], edges[1:]):
        T = X[a:b].T.tocsr()
        T.sort_indices()
        k = T.nnz
        indices[pos:pos + k] = T.indices
        indices[pos:pos + k] += index(a)
        data[pos:pos + k] = T.data
        panels.append((T.indptr.astype(index, copy=False), indices[pos:pos + k],
                       data[pos:pos + k]))
        pos += k
    return panels


class CsrOperator(_Operator):
    """X in CSR (sorted, duplicate-free indices) plus one copy of X.T for W.T @ X, made at
    the first product or terms of side H: in column panels where W is large (``panel_count``),
    one CSR matrix otherwise."""

    def __init__(self, X):
        self.X = X
        self._panels = None
        self.shape = X.shape
        self.dtype = X.dtype
        self.nnz = int(np.count_nonzero(X.data))  # stored zeros do not count: as dense
        data64 = X.data.astype(np.float64)
        self.sq_norm = float(data64 @ data64)
        self.total = float(data64.sum())
        self._loss_rows = np.empty(max(self.shape), dtype=np.float64)

    def panels(self, G=None):
        """X^T's panels (see ``transposed_panels``), made on first use for the factor G."""
        if self._panels is None:
            m, n = self.shape
            count = 1 if G is None else panel_count(m, n, G, self.rank_kernels(G.shape[1]))
            self._panels = transposed_panels(self.X, count)
        return self._panels

    @property
    def XT(self):
        """X^T as one CSR matrix: the operator's own copy unless it is in panels."""
        panels = self.panels()
        if len(panels) == 1:
            return sp.csr_matrix(panels[0][::-1], shape=self.shape[::-1], copy=False)
        XT = self.X.T.tocsr()
        XT.sort_indices()
        return XT

    def product(self, side, G, out):
        if side == "W":
            X = self.X
            ks.csr_times_dense(X.indptr, X.indices, X.data, G, out,
                               by_rank=self.rank_kernels(G.shape[1]))
            return out
        return self._over_panels(G, ks.csr_times_dense, ks.csr_times_dense_add, (G,), out)

    def _over_panels(self, G, kernel, kernel_add, args, out):
        """``kernel(*panel, *args, out)`` on X^T's first panel, ``kernel_add`` (the same,
        adding to out's rows) on the others; a non-C-contiguous ``out`` is filled through a
        C-contiguous scratch, which the ``_add`` kernels need. One panel takes ``kernel``'s
        own choice of kernel; several exist only where the fixed-rank ones are used."""
        panels = self.panels(G)
        if len(panels) == 1:
            kernel(*panels[0], *args, out, by_rank=self.rank_kernels(G.shape[1]))
            return out
        acc = out if ks.fixed_rank_rows(G, out) else np.empty_like(G, shape=out.shape)
        kernel(*panels[0], *args, acc)
        for panel in panels[1:]:
            kernel_add(*panel, *args, acc)
        if acc is not out:
            out[...] = acc
        return out

    def cross64(self, W64, H64):
        """<W, X Ht> with float64 products and sums (X's float32 values are exact in them)."""
        X = self.X
        P = np.empty_like(W64)
        ks.csr_times_dense(X.indptr, X.indices, X.data, H64, P,
                           by_rank=self.rank_kernels(H64.shape[1]))
        return float(np.vdot(W64, P))

    def beta_terms(self, side, F, G, beta, num, den):
        eps = wh_guard(self.dtype, beta)
        if beta == 1:
            if side == "W":
                X = self.X
                ks.csr_kl_numerator(X.indptr, X.indices, X.data, F, G, eps, num,
                                    by_rank=self.rank_kernels(G.shape[1]))
            else:
                self._over_panels(G, ks.csr_kl_numerator, ks.csr_kl_numerator_add,
                                  (F, G, eps), num)
            column_sums(G, den[0])
        else:   # all m x n entries per call anyway: X^T in one piece
            A = self.X if side == "W" else self.XT
            T = self.dtype.type
            ks.csr_beta_tiles(A.indptr, A.indices, A.data, F, G, T(beta), eps, num, den,
                              self._loss_rows, True, False, *BETA_TILES)

    def loss(self, W, Ht, beta, cross_from=None):
        """D_beta(X | W Ht^T). ``cross_from``: see ``frobenius_loss`` (beta = 2 only)."""
        X = self.X
        m = self.shape[0]
        rows = self._loss_rows[:m]
        if beta == 2:
            return self.frobenius_loss(W, Ht, cross_from)
        eps = wh_guard(self.dtype, beta)
        if beta == 1:
            ks.csr_kl_loss_rows(X.indptr, X.indices, X.data, W, Ht, eps, rows,
                                by_rank=self.rank_kernels(W.shape[1]))
            col_W, col_H = np.empty(W.shape[1]), np.empty(W.shape[1])   # float64 sums
            column_sums(W, col_W)
            column_sums(Ht, col_H)
            return max(float(rows.sum()) + float(col_W @ col_H), 0.0)
        T = self.dtype.type
        ks.csr_beta_tiles(X.indptr, X.indices, X.data, W, Ht, T(beta), eps, W, W, rows,
                          False, True, *BETA_TILES)
        return max(float(rows.sum()), 0.0)


# rows of WH per block of the one-pass dense beta step: it holds two such buffers per
# thread (WH and WH^(beta-1)); the two-pass kernels keep theirs within 4 MiB
BETA_ONE_PASS_BYTES = 8 << 20


class DenseOperator(_Operator):
    """A dense X kept C-contiguous. Products with X run on row blocks of X; X^T W too where X
    is tall enough (summed per-block partials, ``_transposed_block``), and there an MU step
    of W may also make the H step's terms from partials (``mu_w_step_one_pass``).
    Otherwise, and for the beta kernels of side H, which need rows of X^T, a C-contiguous
    copy of X.T is made at first use (``XT``): an MU or HALS fit on a tall X never holds one
    (for beta != 2: while a block's rows of WH fit in ``BETA_ONE_PASS_BYTES``).
    No m x n model buffer: WH is made and consumed block by block."""

    def __init__(self, X):
        self.X = X
        self._XT = None
        self.shape = X.shape
        self.dtype = X.dtype
        self.nnz = int(np.count_nonzero(X))
        X64 = X.astype(np.float64, copy=False).ravel()
        self.sq_norm = float(X64 @ X64)
        self.total = float(X64.sum())
        self._loss_rows = np.empty(max(self.shape), dtype=np.float64)
        self._buffers = {}     # (blocks, r, n) partial products, made at first use
        # Rows per parallel task, fixed by the shape (never by the thread count, so results
        # do not depend on it): products take ~1/16 of the rows (large GEMMs, 16 tasks to
        # balance); the beta kernels keep a block's WH (block x n) within ~4 MiB: at 1 MiB the
        # transposed side of a 10,000 x 784 X got 13-row GEMMs and a dense KL iteration took
        # 1.2x longer (43.5-46.0 vs 36.3-37.2 ms); 8 MiB gained nothing more.
        item = self.dtype.itemsize
        self._block, self._beta_block = {}, {}
        for side, (rows, cols) in (("W", self.shape), ("H", self.shape[::-1])):
            self._block[side] = int(min(1024, max(16, -(-rows // 16))))
            self._beta_block[side] = int(min(self._block[side],
                                             max(8, (4 << 20) // (cols * item))))
        # the products' GEMM orientation per side (kd.dense_times_gt): G^T A_b^T for blocks of
        # >= 256 rows of >= 512 columns, where it measured 1.20-1.25x; A_b G elsewhere
        self._gt = {side: self._block[side] >= 256 and cols >= 512
                    for side, cols in (("W", self.shape[1]), ("H", self.shape[0]))}

    @property
    def XT(self):
        if self._XT is None:
            self._XT = np.ascontiguousarray(self.X.T)
        return self._XT

    def _mat(self, side):
        return self.X if side == "W" else self.XT

    def _transposed_block(self, r):
        """Rows of X per partial product of X^T W, or 0 where the partials do not pay.

        A partial is r x n per block of X's rows, so the partials add r / block of X in
        memory and in writes. With blocks of at least 16 r rows that is at most 1/16 of X
        (plus one r x n), and with at least 8 blocks the threads have work. Measured (2
        threads, float64): 10,000 x 784, r = 30, 16 blocks of 625 rows: 9.5 -> 7.3 ms;
        short wide X lost instead with small blocks (200 x 100,000, r = 50: 32 -> 468 ms;
        1,000 x 50,000, r = 20: 88 -> 107 ms), and those take the row blocks of X^T.
        """
        m = self.shape[0]
        block = max(self._block["W"], -(-m // 32), 16 * r)
        return block if -(-m // block) >= 8 else 0

    def _times(self, side, G, out):
        times = kd.dense_times_gt if self._gt[side] else kd.dense_times
        times(self._mat(side), G, out, self._block[side])

    def product(self, side, G, out):
        if side == "W":
            self._times("W", G, out)
            return out
        block = self._transposed_block(G.shape[1])
        if not block:
            self._times("H", G, out)
            return out
        # X^T W from X itself: no transposed copy of X (kd.dense_times_transposed)
        kd.dense_times_transposed(self.X, G, self._partials(block, G), out, block)
        return out

    def _scratch(self, name, shape, dtype):
        """A buffer kept between calls (the partial products), remade when the shape or
        dtype changes."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(shape, dtype=dtype)
        return buf

    def _partials(self, block, G, name="partial"):
        return self._scratch(name, (-(-self.shape[0] // block), G.shape[1], self.shape[1]),
                             G.dtype)

    def mu_w_step_one_pass(self, W, Ht, beta, gram, l1, l2, gamma, tiny, num_h, den_h):
        """On X tall enough for summed partials (``_transposed_block``): for beta = 2 the
        Frobenius step of W and num_h = X^T W (kd.dense_mu_frobenius_w; where the products
        take the G^T A_b^T orientation), otherwise the beta step of W and the H step's terms
        (kd.dense_mu_beta_w; while a block's rows of WH fit in ``BETA_ONE_PASS_BYTES``), in
        one pass over X, with no copy of X^T. False (nothing done) elsewhere."""
        block = self._transposed_block(W.shape[1])
        if not block:
            return False
        if beta == 2:
            if not self._gt["W"]:
                return False
            kd.dense_mu_frobenius_w(self.X, W, Ht, gram, l1, l2, gamma, tiny,
                                    self._partials(block, W), num_h, block)
            return True
        if block * self.shape[1] * self.dtype.itemsize > BETA_ONE_PASS_BYTES:
            return False
        T = self.dtype.type
        kd.dense_mu_beta_w(self.X, W, Ht, T(beta), wh_guard(self.dtype, beta), l1, l2, gamma,
                           tiny, self._partials(block, W),
                           self._partials(block, W, "partial_den"), num_h, den_h, block)
        if beta == 1:
            column_sums(W, den_h[0])
        return True

    def cross64(self, W64, H64):
        """<W, X Ht> in float64, X converted block by block (no float64 copy of X)."""
        partial = np.empty((self.shape[0] + self._block["W"] - 1) // self._block["W"])
        kd.dense_cross64(self.X, W64, H64, partial, self._block["W"])
        return float(partial.sum())

    def beta_terms(self, side, F, G, beta, num, den):
        A = self._mat(side)
        T = self.dtype.type
        kd.dense_beta_blocks(A, F, G, T(beta), wh_guard(self.dtype, beta), num, den,
                             self._loss_rows, True, False, self._beta_block[side])
        if beta == 1:
            column_sums(G, den[0])

    def loss(self, W, Ht, beta, cross_from=None):
        if beta == 2:
            return self.frobenius_loss(W, Ht, cross_from)
        m = self.shape[0]
        rows = self._loss_rows[:m]
        T = self.dtype.type
        kd.dense_beta_blocks(self.X, W, Ht, T(beta), wh_guard(self.dtype, beta), W, W, rows,
                             False, True, self._beta_block["W"])
        return max(float(rows.sum()), 0.0)


def make_operator(X):
    """Wrap a validated X (C-contiguous ndarray or canonical CSR) in its operator."""
    if sp.issparse(X):
        return CsrOperator(X)
    return DenseOperator(X)
