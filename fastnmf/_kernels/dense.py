"""Dense kernels: row blocks in parallel, each block's products by a single-threaded BLAS call.

Threading contract: ``prange`` over fixed blocks of ``block`` rows; block b reads shared
inputs and writes only rows [b*block, (b+1)*block) of its outputs (and of ``loss_rows``, and
of W in the one-pass MU step), or only ``partial[b]`` in the kernels that sum per-block
partial products; those sums then run over column tiles, each tile writing only its own
rows of ``out``. Scratch arrays are a block's own. BLAS runs single-threaded inside (the
caller limits BLAS to one thread for the fit), so Numba's pool is the only one running: no
two pools spin against each other, and a row's result does not depend on the thread count.

The beta kernels never form the m x n model: each block computes its rows of WH with one
GEMM, turns them into the MU terms elementwise, and multiplies back with G, all while the
block is in cache.
"""
import numpy as np
from numba import prange

from .._jit import inline_helper, parallel_kernel
from ._scalar import guarded
from ._vector_math import log_in_place, power_in_place
from .factor import mu_entry   # Numba's cache watches this file only: after a change to
                               # mu_entry, clear __pycache__/*.nb* (as for _scalar)


@parallel_kernel
def dense_times(A, G, out, block):
    """out = A @ G (A m x n C-contiguous, G n x r)."""
    m = A.shape[0]
    for b in prange((m + block - 1) // block):
        s = b * block
        e = min(m, s + block)
        np.dot(A[s:e], G, out[s:e])


@parallel_kernel
def dense_times_gt(A, G, out, block):
    """out = A @ G as ``dense_times``, each block computed transposed, out_b^T = G^T A_b^T,
    with the small factor as the left operand, and transposed into ``out`` while in cache.

    Single-threaded OpenBLAS ran 10,000 x 784 by 784 x 30 at 36 GFLOP/s that way and at
    26-27 the other way. It pays for blocks of many rows and not too few columns; the caller
    chooses (``DenseOperator``): measured 1.20-1.25x with 625-1024-row blocks and 784-1000
    columns, but 0.66x with 16-row blocks of 100,000 columns and 0.87x with 1024-row blocks
    of 200 columns.
    """
    m = A.shape[0]
    GT = np.ascontiguousarray(G.T)
    for b in prange((m + block - 1) // block):
        s = b * block
        e = min(m, s + block)
        out[s:e] = np.dot(GT, A[s:e].T).T


@parallel_kernel
def sum_partials(partial, nb, out):
    """out (n x r) = sum of partial[0 .. nb-1] (each r x n), added in that order, in
    parallel over tiles of 256 columns; a tile writes only its own rows of ``out``."""
    n = partial.shape[2]
    cols = 256
    for c in prange((n + cols - 1) // cols):
        j0 = c * cols
        j1 = min(n, j0 + cols)
        tile = partial[0, :, j0:j1].copy()
        for b in range(1, nb):
            tile += partial[b, :, j0:j1]
        out[j0:j1] = tile.T


@parallel_kernel
def dense_times_transposed(A, F, partial, out, block):
    """out = A^T @ F (A m x n C-contiguous, F m x r), from A itself: block b of ``block`` rows
    computes partial[b] = F_b^T A_b (r x n) and ``out`` is their sum in block order, so the
    result does not depend on the thread count. ``partial`` is (ceil(m / block), r, n).

    The same product by row blocks of a copy of A^T ran K = m long GEMMs with b-column
    results: 9.5 ms for 784 x 10,000 by 10,000 x 30 at 2 threads, against 7.3 ms this way.
    It pays only for tall A with blocks of many rows per partial (the caller decides, see
    ``DenseOperator``). The second pass sums the partials (n r (m / block) additions) in
    parallel over column tiles; each tile writes only its own rows of ``out``.
    """
    m = A.shape[0]
    nb = (m + block - 1) // block
    if nb == 0:
        out[:] = 0
        return
    for b in prange(nb):
        s = b * block
        e = min(m, s + block)
        np.dot(F[s:e].T, A[s:e], partial[b])
    sum_partials(partial, nb, out)


@parallel_kernel
def dense_mu_frobenius_w(A, W, Ht, gram, l1, l2, gamma, tiny, partial, out, block):
    """The Frobenius MU step of W and the next side's numerator in one pass over A:
    per block of ``block`` rows, num_b = A_b Ht (as Ht^T A_b^T, see ``dense_times_gt``),
    W_b <- W_b * (num_b / max(W_b gram + l1 + l2 W_b, tiny)) ** gamma, and then, while A_b
    is still in cache, partial[b] = W_b^T A_b with the updated W_b; ``out`` = A^T W is the
    sum of the partials in block order (``dense_times_transposed``). The W step is row-local
    given gram = Ht^T Ht, so this is the step of ``mu_apply_gram`` followed by the product,
    with the same blocks giving bitwise the same numbers, and A is read once per iteration
    instead of twice: 10,000 x 784, r = 30, 2 threads: 15.2 -> 14.0 ms.
    Block b writes only its rows of W and partial[b]; the sum runs over column tiles.
    """
    m = A.shape[0]
    r = W.shape[1]
    normal = np.finfo(W.dtype).tiny
    nb = (m + block - 1) // block
    if nb == 0:
        out[:] = 0
        return
    HT = np.ascontiguousarray(Ht.T)
    for b in prange(nb):
        s = b * block
        e = min(m, s + block)
        Ab = A[s:e]
        num = np.dot(HT, Ab.T)
        den = np.dot(W[s:e], gram)
        for i in range(s, e):
            for k in range(r):
                W[i, k] = mu_entry(W[i, k], num[k, i - s], den[i - s, k], l1, l2, gamma, tiny,
                                   normal)
        np.dot(W[s:e].T, Ab, partial[b])
    sum_partials(partial, nb, out)


@parallel_kernel
def dense_cross64(A, F, G, partial, block):
    """partial[b] = <F_b, A_b G> for row block b, in float64 (F, G float64; A of any float
    dtype, converted one block at a time): the cross term of the Frobenius loss."""
    m = A.shape[0]
    r = F.shape[1]
    for b in prange((m + block - 1) // block):
        s = b * block
        e = min(m, s + block)
        P = np.dot(A[s:e].astype(np.float64), G)
        acc = 0.0
        for i in range(s, e):
            for k in range(r):
                acc += F[i, k] * P[i - s, k]
        partial[b] = acc


@inline_helper
def block_terms(A, s, WH, S, eps, bm1, kl, bf, want_terms, want_loss, loss_rows):
    """For the rows s .. s + len(WH) of A with their model rows WH (guarded below by eps):
    with ``want_terms`` WH <- A o WH^(beta-2) and, unless kl, S <- WH^(beta-1) (bm1 = beta-1,
    bf = beta, float64s; by the vector power ``power_in_place``); with ``want_loss``
    loss_rows[s + ii] = sum_j d_beta(A_ij | WH_ij) in float64, from a float64 row P of
    vector powers or logarithms:
      beta not in {0, 1}: P = wh^(beta-1), Q = x^beta, and
                          sum_j d = sum_j (Q + ((beta-1) wh - beta x) P) / (beta (beta-1)),
                          each entry's terms cancelling at its own scale;
      beta = 1 (KL):      P = log(x / wh) (0 where x = 0), sum_j d = sum_j (x P - x + wh);
      beta = 0 (IS):      P = log(x / wh), sum_j d = sum_j (x / wh - P - 1).
    Each pass over a row is one simple loop (no branch that depends on the entry), so LLVM
    vectorizes it: a branch on x == 0 cost a misprediction per entry on half-zero X.
    """
    n = WH.shape[1]
    logs = bf == 0.0 or kl
    at_zero = 1.0 if kl else 0.0     # the ratio for x = 0: KL's term is 0, IS's inf
    P = np.empty(n if want_loss else 0)
    Q = np.empty(n if want_loss and not logs else 0)
    for ii in range(WH.shape[0]):
        x = A[s + ii]
        if want_loss:
            if logs:
                for j in range(n):
                    q = np.float64(x[j]) / np.float64(guarded(WH[ii, j], eps))
                    P[j] = q if q != 0.0 else at_zero
                log_in_place(P)
                acc = 0.0
                for j in range(n):
                    xj = np.float64(x[j])
                    wh = np.float64(guarded(WH[ii, j], eps))
                    acc += (xj * P[j] - xj + wh) if kl else (xj / wh - P[j] - 1.0)
            else:
                for j in range(n):
                    P[j] = guarded(WH[ii, j], eps)
                    Q[j] = x[j]
                power_in_place(P, bm1)
                power_in_place(Q, bf)
                acc = 0.0
                for j in range(n):
                    acc += Q[j] + P[j] * (bm1 * guarded(WH[ii, j], eps) - bf * x[j])
                acc /= bf * bm1
            loss_rows[s + ii] = acc
        if want_terms:
            if kl:
                for j in range(n):
                    WH[ii, j] = x[j] / guarded(WH[ii, j], eps)
            else:
                for j in range(n):
                    WH[ii, j] = guarded(WH[ii, j], eps)
                    S[ii, j] = WH[ii, j]
                power_in_place(S[ii], bm1)
                for j in range(n):
                    WH[ii, j] = x[j] * S[ii, j] / WH[ii, j]


@parallel_kernel
def dense_beta_blocks(A, F, G, beta, eps, num, den, loss_rows, want_terms, want_loss, block):
    """MU terms and/or per-row loss for any beta on a dense A ~ F G^T (A m x n, F m x r,
    G n x r), WH guarded below by ``eps``.

    want_terms: num = (A o WH^(beta-2)) G; den = WH^(beta-1) G, except for beta == 1 where
                den is left alone (the caller fills it with the column sums of G).
    want_loss:  loss_rows[i] = sum_j d_beta(A_ij | WH_ij) in float64.
    """
    m, n = A.shape
    one = eps - eps + 1
    bm1 = np.float64(beta) - 1.0
    kl = beta == one
    bf = np.float64(beta)
    for b in prange((m + block - 1) // block):
        s = b * block
        e = min(m, s + block)
        WH = np.dot(F[s:e], G.T)
        S = np.empty_like(WH) if (want_terms and not kl) else WH[:0]
        block_terms(A, s, WH, S, eps, bm1, kl, bf, want_terms, want_loss, loss_rows)
        if want_terms:
            np.dot(WH, G, num[s:e])
            if not kl:
                np.dot(S, G, den[s:e])


@parallel_kernel
def dense_mu_beta_w(A, W, Ht, beta, eps, l1, l2, gamma, tiny, partial_num, partial_den,
                    num_h, den_h, block):
    """The MU step of W for a beta != 2 and the next side's terms in one pass over A: per
    block of ``block`` rows, WH_b = W_b Ht^T, the W-side terms (as ``dense_beta_blocks``)
    and the step of W_b (as ``mu_apply``; for beta = 1 its den is the column sums of Ht);
    then, while A_b is in cache, WH_b again with the updated W_b and its H-side terms as
    partials: partial_num[b] = W_b^T (A_b o WH_b^(beta-2)) and, unless beta = 1,
    partial_den[b] = W_b^T WH_b^(beta-1). ``num_h`` / ``den_h`` (n x r) are their sums in
    block order (``sum_partials``); for beta = 1 ``den_h`` is left to the caller (the column
    sums of the updated W). The rows of X^T (a copy of X) are then never needed.
    Block b writes only its rows of W and partial_*[b]; the sums run over column tiles.
    """
    m = A.shape[0]
    r = W.shape[1]
    zero = eps - eps
    one = zero + 1
    bm1 = np.float64(beta) - 1.0
    kl = beta == one
    bf = np.float64(beta)
    normal = np.finfo(W.dtype).tiny
    nb = (m + block - 1) // block
    if nb == 0:
        num_h[:] = zero
        den_h[:] = zero
        return
    HT = np.ascontiguousarray(Ht.T)
    col = np.zeros(r, dtype=W.dtype)   # the W-side den of beta = 1: the column sums of Ht
    if kl:
        for j in range(Ht.shape[0]):
            for k in range(r):
                col[k] += Ht[j, k]
    for b in prange(nb):
        s = b * block
        e = min(m, s + block)
        WH = np.dot(W[s:e], HT)
        S = WH[:0] if kl else np.empty_like(WH)
        block_terms(A, s, WH, S, eps, bm1, kl, bf, True, False, WH[0, :0])
        num = np.dot(WH, Ht)
        den = num[:0] if kl else np.dot(S, Ht)
        for i in range(s, e):
            for k in range(r):
                d = col[k] if kl else den[i - s, k]
                W[i, k] = mu_entry(W[i, k], num[i - s, k], d, l1, l2, gamma, tiny, normal)
        np.dot(W[s:e], HT, WH)
        block_terms(A, s, WH, S, eps, bm1, kl, bf, True, False, WH[0, :0])
        Wb = W[s:e].T
        np.dot(Wb, WH, partial_num[b])
        if not kl:
            np.dot(Wb, S, partial_den[b])
    sum_partials(partial_num, nb, num_h)
    if not kl:
        sum_partials(partial_den, nb, den_h)
