"""Initial factors: random, NNDSVD and its variants (Boutsidis & Gallopoulos 2008), custom.

Returns ``(W, Ht)`` with ``Ht = H.T``, both C-contiguous in the fit dtype.
"""
import numpy as np
import scipy.sparse as sp


def make_rng(random_state):
    """A numpy Generator from None, an int, a SeedSequence, a Generator or a RandomState."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError):
        raise ValueError(
            f"random_state={random_state!r} must be None, an int, a numpy Generator or "
            "RandomState."
        ) from None


def _mean(X):
    m, n = X.shape
    return float(X.sum(dtype=np.float64)) / (m * n)


def randomized_svd(X, k, rng, n_oversamples=10, n_iter=None):
    """Top-k singular triplets of X (dense or sparse) by randomized subspace iteration
    (Halko, Martinsson & Tropp 2011), in float64. Returns U (m x k), s (k,), Vt (k x n)."""
    m, n = X.shape
    ell = min(k + n_oversamples, min(m, n))
    if n_iter is None:
        n_iter = 7 if k < 0.1 * min(m, n) else 4
    Q = X @ rng.standard_normal((n, ell))
    Q, _ = np.linalg.qr(np.asarray(Q, dtype=np.float64))
    for _ in range(n_iter):
        Z, _ = np.linalg.qr(np.asarray(X.T @ Q, dtype=np.float64))
        Q, _ = np.linalg.qr(np.asarray(X @ Z, dtype=np.float64))
    B = np.asarray((X.T @ Q).T, dtype=np.float64)
    Ub, s, Vt = np.linalg.svd(B, full_matrices=False)
    return (Q @ Ub)[:, :k], s[:k], Vt[:k]


def truncated_svd(X, k, rng):
    """Exact LAPACK SVD for small problems, randomized otherwise. The choice depends on the
    size only, not the storage, so dense and sparse X get the same start."""
    m, n = X.shape
    if m * n <= 250_000 or (k >= 0.25 * min(m, n) and m * n <= 50_000_000):
        dense = X.toarray() if sp.issparse(X) else X
        U, s, Vt = np.linalg.svd(np.asarray(dense, dtype=np.float64), full_matrices=False)
        return U[:, :k], s[:k], Vt[:k]
    if sp.issparse(X):
        X = X.astype(np.float64)
    return randomized_svd(X, k, rng)


def nndsvd(X, k, rng, fill="zeros"):
    """NNDSVD: the positive part of each singular pair, the sign with the larger norm product.

    fill: "zeros" (nndsvd), "mean" (nndsvda: zeros become mean(X)), "random" (nndsvdar: zeros
    become small random values, mean(X) * U(0, 1) / 100).
    """
    m, n = X.shape
    kk = min(k, m, n)
    U, s, Vt = truncated_svd(X, kk, rng)
    W = np.zeros((m, k))
    H = np.zeros((k, n))
    W[:, 0] = np.sqrt(s[0]) * np.abs(U[:, 0])
    H[0, :] = np.sqrt(s[0]) * np.abs(Vt[0, :])
    for j in range(1, kk):
        x, y = U[:, j], Vt[j, :]
        xp, xn = np.maximum(x, 0), np.maximum(-x, 0)
        yp, yn = np.maximum(y, 0), np.maximum(-y, 0)
        nxp, nyp = np.linalg.norm(xp), np.linalg.norm(yp)
        nxn, nyn = np.linalg.norm(xn), np.linalg.norm(yn)
        mp, mn = nxp * nyp, nxn * nyn
        if mp >= mn:
            u, v, sigma, nu, nv = xp, yp, mp, nxp, nyp
        else:
            u, v, sigma, nu, nv = xn, yn, mn, nxn, nyn
        if sigma <= 0:
            continue
        lam = np.sqrt(s[j] * sigma)
        W[:, j] = lam * u / nu
        H[j, :] = lam * v / nv
    small = 1e-6 * max(W.max(initial=0), H.max(initial=0), 1e-300)
    W[W < small] = 0
    H[H < small] = 0
    if fill == "mean":
        avg = _mean(X)
        W[W == 0] = avg
        H[H == 0] = avg
    elif fill == "random":
        avg = _mean(X)
        W[W == 0] = avg * rng.uniform(size=int((W == 0).sum())) / 100
        H[H == 0] = avg * rng.uniform(size=int((H == 0).sum())) / 100
    return W, H


def initialize(X, k, init, random_state, dtype):
    """Initial (W, Ht) for X (validated) and rank k."""
    rng = make_rng(random_state)
    m, n = X.shape
    if init == "random":
        avg = np.sqrt(_mean(X) / k)
        H = np.abs(avg * rng.standard_normal((k, n)))
        W = np.abs(avg * rng.standard_normal((m, k)))
    elif init in ("nndsvd", "nndsvda", "nndsvdar"):
        fill = {"nndsvd": "zeros", "nndsvda": "mean", "nndsvdar": "random"}[init]
        W, H = nndsvd(X, k, rng, fill)
    else:
        raise ValueError(f"init={init!r} is not known; use one of "
                         "'random', 'nndsvd', 'nndsvda', 'nndsvdar', 'custom'.")
    return np.ascontiguousarray(W, dtype=dtype), np.ascontiguousarray(H.T, dtype=dtype)
