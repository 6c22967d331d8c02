"""Dense elementwise kernels for beta != 2 on a dense X (WH itself comes from BLAS).

Threading contract: ``prange`` over rows i; iteration i reads and writes only row i of the
m x n buffers (and ``loss_rows[i]``): no race, thread-count-independent results.
"""
from numba import prange

from .._jit import parallel_kernel
from ._scalar import beta_divergence_entry


@parallel_kernel
def kl_ratio_inplace(X, WH, eps):
    """WH <- X / max(WH, eps)."""
    m, n = WH.shape
    for i in prange(m):
        for j in range(n):
            wh = WH[i, j]
            if wh < eps:
                wh = eps
            WH[i, j] = X[i, j] / wh


@parallel_kernel
def beta_ratio_inplace(X, WH, S, beta, eps):
    """S <- max(WH, eps)^(beta-1);  WH <- X * max(WH, eps)^(beta-2)."""
    m, n = WH.shape
    bm1 = beta - (eps - eps + 1)
    for i in prange(m):
        for j in range(n):
            wh = WH[i, j]
            if wh < eps:
                wh = eps
            d = wh**bm1
            S[i, j] = d
            WH[i, j] = X[i, j] * d / wh


@parallel_kernel
def beta_loss_rows(X, WH, beta, eps, loss_rows):
    """loss_rows[i] = sum_j d_beta(X_ij | max(WH_ij, eps)), accumulated in float64."""
    m, n = WH.shape
    b = float(beta)
    for i in prange(m):
        acc = 0.0
        for j in range(n):
            wh = WH[i, j]
            if wh < eps:
                wh = eps
            acc += beta_divergence_entry(X[i, j], wh, b)
        loss_rows[i] = acc
