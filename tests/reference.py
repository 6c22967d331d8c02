"""Slow, obvious NumPy/SciPy reference implementations, written from the formulas.

Every kernel, operator method and solver step of fastnmf is tested against these. They are
deliberately naive: dense float64 arrays, whole-matrix NumPy expressions or explicit Python
loops, no fusion, no guards beyond the ones the formulas state. They never import fastnmf.

Conventions (the same as the package's): a factor F (rows x r) and a fixed factor G
(cols x r) model the matrix A ~ F G^T; for side "W" A = X, F = W, G = H^T; for side "H"
A = X^T, F = H^T, G = W.
"""
import numpy as np
import scipy.sparse as sp


# ------------------------------------------------------------------------------------------
# helpers

def dense64(X):
    """X (ndarray or any scipy sparse matrix, duplicates summed) as a dense float64 array."""
    if sp.issparse(X):
        return np.asarray(X.toarray(), dtype=np.float64)
    return np.array(X, dtype=np.float64)


def f64(A):
    return np.asarray(A, dtype=np.float64)


def wh_guard(dtype, beta):
    """The documented lower bound on WH inside the beta terms (fastnmf/_data.py docstring):
    sqrt(tiny) for beta >= 1, tiny^(1 / (2 (2 - beta))) for beta < 1; tiny of ``dtype``."""
    tiny = float(np.finfo(dtype).tiny)
    if beta >= 1:
        return np.sqrt(tiny)
    return tiny ** (1.0 / (2.0 * (2.0 - beta)))


def mu_exponent(beta):
    """Fevotte & Idier (2011), Table 2: gamma(beta) = 1/(2-beta) for beta < 1,
    1 for 1 <= beta <= 2, 1/(beta-1) for beta > 2."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta <= 2:
        return 1.0
    return 1.0 / (beta - 1.0)


def guarded_model(F, G, eps):
    """max(F G^T, eps), float64."""
    return np.maximum(f64(F) @ f64(G).T, eps)


# ------------------------------------------------------------------------------------------
# products

def product(X, B):
    """X @ B (X dense or sparse), float64."""
    return dense64(X) @ f64(B)


def kl_numerator(X, F, G, eps):
    """sum_j x_ij / max(wh_ij, eps) G_j   with wh = F G^T; X is the m x n matrix (A)."""
    A = dense64(X)
    WH = guarded_model(F, G, eps)
    return (A / WH) @ f64(G)


def beta_numerator(X, F, G, beta, eps):
    """sum_j x_ij wh_ij^(beta-2) G_j   with wh = max(F G^T, eps)."""
    A = dense64(X)
    WH = guarded_model(F, G, eps)
    return (A * WH ** (beta - 2.0)) @ f64(G)


def beta_denominator(F, G, beta, eps):
    """sum_j wh_ij^(beta-1) G_j   with wh = max(F G^T, eps)   (every j, zeros of X included)."""
    WH = guarded_model(F, G, eps)
    return WH ** (beta - 1.0) @ f64(G)


def kl_ratio(X, WH, eps):
    """Elementwise x / max(wh, eps) for a given model WH, float64."""
    return dense64(X) / np.maximum(f64(WH), eps)


def beta_ratio(X, WH, beta, eps):
    """Elementwise (x * max(wh, eps)^(beta-2), max(wh, eps)^(beta-1)) for a given WH."""
    Y = np.maximum(f64(WH), eps)
    return dense64(X) * Y ** (beta - 2.0), Y ** (beta - 1.0)


# ------------------------------------------------------------------------------------------
# the beta divergence

def beta_divergence_entries(X, Y, beta):
    """Elementwise d_beta(x | y), float64, with 0 log 0 = 0.

    beta = 2: 0.5 (x - y)^2;  beta = 1: x log(x/y) - x + y;  beta = 0: x/y - log(x/y) - 1;
    otherwise (x^b + (b-1) y^b - b x y^(b-1)) / (b (b-1)).
    """
    X = dense64(X)
    Y = f64(Y)
    if beta == 2:
        return 0.5 * (X - Y) ** 2
    if beta == 1:
        xlog = np.zeros_like(X)
        pos = X > 0
        xlog[pos] = X[pos] * np.log(X[pos] / Y[pos])
        return xlog - X + Y
    if beta == 0:
        Q = X / Y
        return Q - np.log(Q) - 1.0
    b = float(beta)
    return (X**b + (b - 1.0) * Y**b - b * X * Y ** (b - 1.0)) / (b * (b - 1.0))


def beta_divergence(X, Y, beta):
    """D_beta(X | Y) = sum_ij d_beta(x_ij | y_ij), float64."""
    return float(beta_divergence_entries(X, Y, beta).sum())


def beta_divergence_rows(X, Y, beta):
    """Per-row sums of d_beta(x_ij | y_ij), float64."""
    return beta_divergence_entries(X, Y, beta).sum(axis=1)


def model_loss(X, W, Ht, beta, eps=None):
    """D_beta(X | W Ht^T); for beta != 2 the model is guarded below by ``eps``
    (default: the documented wh_guard of the factors' dtype)."""
    WH = f64(W) @ f64(Ht).T
    if beta != 2:
        if eps is None:
            eps = wh_guard(np.asarray(W).dtype, beta)
        WH = np.maximum(WH, eps)
    return beta_divergence(X, WH, beta)


def penalty(F, l1, l2):
    """l1 * sum(F) + 0.5 * l2 * ||F||_F^2."""
    F = f64(F)
    return l1 * F.sum() + 0.5 * l2 * float((F * F).sum())


# ------------------------------------------------------------------------------------------
# factor updates

def flush_subnormal(A, dtype):
    """A (float64) with the values a ``dtype`` array could only hold as subnormals set to 0:
    the factor updates never store subnormals."""
    A = np.array(A, dtype=np.float64)
    A[A < np.finfo(dtype).tiny] = 0.0
    return A


def mu_factor_step(F, num, den, l1, l2, gamma, tiny):
    """F * (num / max(den + l1 + l2 F, tiny)) ** gamma, float64, subnormals of F's dtype -> 0."""
    dtype = np.asarray(F).dtype
    F = f64(F)
    d = np.maximum(f64(den) + l1 + l2 * F, tiny)
    return flush_subnormal(F * (f64(num) / d) ** gamma, dtype)


def hals_sweep_row(f, p, Q, l1, normal=0.0):
    """One coordinate-descent sweep k = 0..r-1 on one row f for
    min 0.5 f Q f^T - (p - l1) . f,  f >= 0.  Coordinates with Q_kk <= 0 or below ``normal``
    (the smallest normal number of the factors' dtype: 1 / Q_kk would overflow there) are
    skipped.
    Returns (new f, squared change of the sweep)."""
    f = np.array(f, dtype=np.float64)
    r = f.shape[0]
    change = 0.0
    for k in range(r):
        if Q[k, k] <= 0 or Q[k, k] < normal:
            continue
        grad = float(f @ Q[:, k]) - (p[k] - l1)       # d/df_k of the objective
        new = max(0.0, f[k] - grad / Q[k, k])           # exact minimizer in f_k, clipped
        if new < normal:                                 # never stored as a subnormal
            new = 0.0
        change += (new - f[k]) ** 2
        f[k] = new
    return f, change


def hals_sweeps(F, P, Q, l1, max_sweeps, delta_sq):
    """The rows of F after the repeated sweeps documented in fastnmf's ``hals_sweeps``:
    each row does one sweep, then repeats it (up to ``max_sweeps`` sweeps in all) and stops
    after the first repeated sweep whose squared change is <= delta_sq x that of the first."""
    normal = float(np.finfo(np.asarray(F).dtype).tiny)
    F = np.array(F, dtype=np.float64)
    P = f64(P)
    Q = f64(Q)
    for i in range(F.shape[0]):
        f, first = hals_sweep_row(F[i], P[i], Q, l1, normal)
        for _ in range(1, max_sweeps):
            f, change = hals_sweep_row(f, P[i], Q, l1, normal)
            if change <= delta_sq * first:
                break
        F[i] = f
    return F


# ------------------------------------------------------------------------------------------
# full iterations on a dense X (update W, then H)

def mu_side_terms(A, F, G, beta, eps):
    """(num, den) of the MU step for F with A ~ F G^T. beta = 2: A G and F G^T G (no guard);
    otherwise the general-beta terms with wh = max(F G^T, eps)."""
    if beta == 2:
        G64 = f64(G)
        return dense64(A) @ G64, f64(F) @ (G64.T @ G64)
    return beta_numerator(A, F, G, beta, eps), beta_denominator(F, G, beta, eps)


def mu_iteration(X, W, Ht, beta, *, l1_W=0.0, l2_W=0.0, l1_H=0.0, l2_H=0.0, eps, tiny):
    """One multiplicative-update iteration (W, then H with the new W), float64.
    Returns (W, Ht)."""
    A = dense64(X)
    gamma = mu_exponent(beta)
    W = f64(W)
    Ht = f64(Ht)
    num, den = mu_side_terms(A, W, Ht, beta, eps)
    W = mu_factor_step(W, num, den, l1_W, l2_W, gamma, tiny)
    num, den = mu_side_terms(A.T, Ht, W, beta, eps)
    Ht = mu_factor_step(Ht, num, den, l1_H, l2_H, gamma, tiny)
    return W, Ht


def hals_iteration(X, W, Ht, *, l1_W=0.0, l2_W=0.0, l1_H=0.0, l2_H=0.0,
                   sweeps_W=1, sweeps_H=1, delta_sq=0.0):
    """One HALS iteration for 0.5||X - W Ht^T||^2 + penalties (W, then H), float64.
    Returns (W, Ht)."""
    A = dense64(X)
    W = f64(W)
    Ht = f64(Ht)
    r = W.shape[1]
    Q = Ht.T @ Ht + l2_W * np.eye(r)
    W = hals_sweeps(W, A @ Ht, Q, l1_W, sweeps_W, delta_sq)
    Q = W.T @ W + l2_H * np.eye(r)
    Ht = hals_sweeps(Ht, A.T @ W, Q, l1_H, sweeps_H, delta_sq)
    return W, Ht


def hals_sweep_count(entries, rows, other, r, alpha=0.5, cap=50):
    """Gillis & Glineur's repetition count, as documented in fastnmf/solvers/hals.py:
    floor(1 + alpha * rho), rho = (entries r + other r^2) / (rows r^2), within [1, cap]."""
    rho = (entries * r + other * r * r) / max(rows * r * r, 1)
    return int(min(cap, max(1, np.floor(1 + alpha * rho))))
