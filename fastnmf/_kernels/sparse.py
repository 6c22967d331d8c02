"""CSR kernels: sparse-dense products and the fused beta-divergence terms.

Threading contract (every kernel here): the outer ``prange`` runs over rows ``i`` of the CSR
matrix; iteration ``i`` reads shared inputs and writes only row ``i`` of its outputs (and
``loss_rows[i]``), so there is no race and each row is computed by exactly one thread in a
fixed order: results do not depend on the thread count. ``W.T @ X`` is computed by the same
kernels on the CSR copy of ``X.T`` (never by scattering into shared rows).

Shapes: ``indptr`` (m+1,), ``indices``/``data`` (nnz,), ``F`` (m, r), ``G`` (n, r) with
``F @ G.T`` the model of the m x n matrix. ``data``, ``F``, ``G`` and the outputs share one
float dtype; scalars ``eps``/exponents are passed in that dtype so float32 never widens.
"""
from numba import prange

from .._jit import parallel_kernel
from ._scalar import beta_divergence_entry


@parallel_kernel
def csr_times_dense(indptr, indices, data, B, out):
    """out = A @ B for CSR A (m x n) and dense B (n x r)."""
    m, r = out.shape
    for i in prange(m):
        for k in range(r):
            out[i, k] = 0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            x = data[p]
            for k in range(r):
                out[i, k] += x * B[j, k]


@parallel_kernel
def csr_kl_numerator(indptr, indices, data, F, G, eps, out):
    """out[i] = sum over nonzeros j of x_ij / max(F_i . G_j, eps) * G_j  (the KL MU numerator)."""
    m, r = out.shape
    zero = eps - eps
    for i in prange(m):
        for k in range(r):
            out[i, k] = zero
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            wh = zero
            for k in range(r):
                wh += F[i, k] * G[j, k]
            if wh < eps:
                wh = eps
            v = data[p] / wh
            for k in range(r):
                out[i, k] += v * G[j, k]


@parallel_kernel
def csr_kl_loss_rows(indptr, indices, data, F, G, eps, loss_rows):
    """loss_rows[i] = sum over nonzeros of x log(x / wh) - x, in float64.

    The sum over all entries of WH is added by the caller from column sums.
    """
    m = loss_rows.shape[0]
    r = F.shape[1]
    zero = eps - eps
    for i in prange(m):
        acc = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            x = data[p]
            if x == 0:
                continue
            wh = zero
            for k in range(r):
                wh += F[i, k] * G[j, k]
            if wh < eps:
                wh = eps
            acc += beta_divergence_entry(x, wh, 1.0) - float(wh)
        loss_rows[i] = acc


@parallel_kernel
def csr_beta_all_entries(indptr, indices, data, F, G, beta, eps, num, den, loss_rows,
                         want_terms, want_loss):
    """General beta on CSR: one pass over every entry (i, j) of row i, WH computed once.

    With ``want_terms``:  num[i] = sum_j x_ij wh_ij^(beta-2) G_j  (nonzeros only),
                          den[i] = sum_j wh_ij^(beta-1) G_j       (all n entries).
    With ``want_loss``:   loss_rows[i] = sum_j d_beta(x_ij | wh_ij)  (float64).
    Requires sorted, duplicate-free column indices. Costs O(n r) per row: the denominator of
    a beta not in {1, 2} has no closed form over the zeros of X.
    """
    m = F.shape[0]
    n, r = G.shape
    zero = eps - eps
    one = zero + 1
    bm1 = beta - one
    for i in prange(m):
        if want_terms:
            for k in range(r):
                num[i, k] = zero
                den[i, k] = zero
        p = indptr[i]
        end = indptr[i + 1]
        acc = 0.0
        for j in range(n):
            x = zero
            if p < end and indices[p] == j:
                x = data[p]
                p += 1
            wh = zero
            for k in range(r):
                wh += F[i, k] * G[j, k]
            if wh < eps:
                wh = eps
            if want_terms:
                d = wh**bm1
                c = x * d / wh
                for k in range(r):
                    num[i, k] += c * G[j, k]
                    den[i, k] += d * G[j, k]
            if want_loss:
                acc += beta_divergence_entry(x, wh, float(beta))
        if want_loss:
            loss_rows[i] = acc
