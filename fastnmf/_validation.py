"""Every parameter and input check, in one place. Messages name the parameter, the value and
what is allowed. Numba kernels do no bounds checks: nothing reaches them unchecked."""
import numbers
import warnings

import numpy as np
import scipy.sparse as sp

_BETA_NAMES = {
    "frobenius": 2.0,
    "kullback-leibler": 1.0,
    "kl": 1.0,
    "itakura-saito": 0.0,
    "is": 0.0,
}
SOLVERS = ("auto", "mu", "hals")
INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")


class ConvergenceWarning(UserWarning):
    """The fit stopped at ``max_iter`` before the tolerance was met."""


def resolve_beta(beta_loss):
    """Map a loss name or number to the float beta."""
    if isinstance(beta_loss, str):
        key = beta_loss.lower()
        if key not in _BETA_NAMES:
            raise ValueError(
                f"beta_loss={beta_loss!r} is not a known loss; use one of "
                f"{sorted(_BETA_NAMES)} or a real number (the beta of the beta-divergence)."
            )
        return _BETA_NAMES[key]
    if isinstance(beta_loss, numbers.Real) and not isinstance(beta_loss, bool):
        beta = float(beta_loss)
        if not np.isfinite(beta):
            raise ValueError(f"beta_loss={beta_loss!r} must be a finite real number.")
        return beta
    raise ValueError(
        f"beta_loss={beta_loss!r} must be a loss name ({sorted(_BETA_NAMES)}) or a real number."
    )


def mu_exponent(beta):
    """Fevotte & Idier (2011) exponent gamma(beta) making each MU step non-increasing."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def resolve_solver(solver, beta):
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not known; use one of {SOLVERS}.")
    if solver == "auto":
        return "hals" if beta == 2 else "mu"
    if solver == "hals" and beta != 2:
        raise ValueError(
            f"solver='hals' minimizes the Frobenius loss only (beta_loss=2), got beta={beta}; "
            "use solver='mu' for other losses."
        )
    return solver


def check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be an integer.")
    value = int(value)
    if value < low or (high is not None and value > high):
        hi = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name}={value} must be >= {low}{hi}.")
    return value


def check_real(name, value, low=0.0, low_inclusive=True, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite real number.")
    value = float(value)
    if value < low or (value == low and not low_inclusive) or (high is not None and value > high):
        lo = ">=" if low_inclusive else ">"
        hi = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name}={value} must be {lo} {low}{hi}.")
    return value


def _float_dtype(dtype, name):
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(
        f"{name} has dtype {dtype}; allowed are float32, float64 (kept), or integer/bool "
        "(converted to float64); float16, complex, object and string are not accepted."
    )


def check_X(X, beta):
    """Return X as a C-contiguous float ndarray or a canonical CSR matrix (copies only as
    needed; the caller's X is never modified)."""
    if sp.issparse(X):
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got a sparse object with shape {X.shape}.")
        dtype = _float_dtype(X.dtype, "X")
        X = sp.csr_matrix(X)  # a new object; its arrays may be the caller's, only ever read
        try:
            X.check_format(full_check=True)
        except ValueError as exc:
            raise ValueError(f"X is a malformed sparse matrix: {exc}") from None
        if X.dtype != dtype or not X.has_canonical_format:
            X = X.astype(dtype, copy=True)
            X.sum_duplicates()
            X.sort_indices()
        data = X.data
        if data.size and not np.isfinite(data).all():
            raise ValueError("X contains NaN or infinity; all entries must be finite.")
        if data.size and data.min() < 0:
            raise ValueError(f"X has negative entries (min {data.min():g}); NMF needs X >= 0.")
        m, n = X.shape
        has_zeros = X.nnz < m * n or (data.size and (data == 0).any())
        if X.indptr.dtype != X.indices.dtype:
            X.indptr = X.indptr.astype(np.int64)
            X.indices = X.indices.astype(np.int64)
    else:
        if isinstance(X, np.matrix):
            X = np.asarray(X)
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"X must be a 2-D array, got {arr.ndim} dimensions (shape {arr.shape}).")
        dtype = _float_dtype(arr.dtype, "X")
        X = np.ascontiguousarray(arr, dtype=dtype)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinity; all entries must be finite.")
        if X.size and X.min() < 0:
            raise ValueError(f"X has negative entries (min {X.min():g}); NMF needs X >= 0.")
        has_zeros = X.size and not X.all()
        m, n = X.shape
    if m == 0 or n == 0:
        raise ValueError(f"X has shape {X.shape}; it needs at least one row and one column.")
    if not (X.data if sp.issparse(X) else X).any():
        raise ValueError("X is all zeros; there is nothing to factorize.")
    if beta <= 0 and has_zeros:
        raise ValueError(
            f"beta_loss={beta:g} (<= 0, e.g. Itakura-Saito) is undefined where X is zero, "
            "and X has zeros. Add a small positive constant to X or use beta_loss > 0."
        )
    return X


def check_factor(name, A, shape, dtype):
    """A custom W or H: exact shape, finite, non-negative; cast to the fit dtype (a copy)."""
    if A is None:
        raise ValueError(f"init='custom' needs {name}; got None.")
    if sp.issparse(A):
        raise TypeError(f"{name} must be a dense array, got a sparse matrix.")
    arr = np.asarray(A)
    if arr.dtype.kind not in "biuf" or arr.dtype == np.float16:
        raise TypeError(f"{name} has dtype {arr.dtype}; use float32 or float64.")
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; expected {shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative entries (min {arr.min():g}); it must be >= 0.")
    return np.array(arr, dtype=dtype, order="C", copy=True)


def check_n_components(n_components, shape):
    k = check_int("n_components", n_components, 1)
    if k > min(shape):
        warnings.warn(
            f"n_components={k} exceeds min(X.shape)={min(shape)}; the factorization is "
            "over-complete and not unique.",
            UserWarning, stacklevel=4,
        )
    return k


def check_l1_ratio(l1_ratio):
    """A float in [0, 1], or a pair (for W, for H)."""
    if isinstance(l1_ratio, (tuple, list)):
        if len(l1_ratio) != 2:
            raise ValueError(f"l1_ratio={l1_ratio!r}: a pair (for W, for H) or one number.")
        return tuple(check_real("l1_ratio", v, 0.0, True, 1.0) for v in l1_ratio)
    v = check_real("l1_ratio", l1_ratio, 0.0, True, 1.0)
    return (v, v)
