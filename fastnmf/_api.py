"""The function form: ``nmf(X, n_components, ...) -> (W, H, info)``."""
import numpy as np
import scipy.sparse as sp

from . import _driver
from ._data import make_operator
from ._init import initialize
from ._memory import aligned_copy, check_memory
from ._threads import resolve_n_threads, thread_limit
from ._validation import (INITS, check_factor, check_int, check_l1_ratio, check_n_components,
                          check_real, check_X, resolve_beta, resolve_solver)
from .solvers import SOLVER_CLASSES
from .solvers._base import Penalty


def regularization(alpha_W, alpha_H, l1_ratio, shape):
    """Per-factor (l1, l2) weights with scikit-learn's scaling: the W penalty is multiplied by
    n_features (n) and the H penalty by n_samples (m), so that alpha means the same for any
    matrix size. Objective:  D(X|WH) + n a_W (rho_W |W|_1 + (1-rho_W)/2 |W|^2)
                                     + m a_H (rho_H |H|_1 + (1-rho_H)/2 |H|^2)."""
    a_W = check_real("alpha_W", alpha_W)
    a_H = a_W if (isinstance(alpha_H, str) and alpha_H == "same") else None
    if a_H is None:
        if isinstance(alpha_H, str):
            raise ValueError(f"alpha_H={alpha_H!r} must be a non-negative number or 'same'.")
        a_H = check_real("alpha_H", alpha_H)
    rho_W, rho_H = check_l1_ratio(l1_ratio)
    m, n = shape
    return Penalty(l1_W=n * a_W * rho_W, l2_W=n * a_W * (1 - rho_W),
                   l1_H=m * a_H * rho_H, l2_H=m * a_H * (1 - rho_H))


def _constant_factor(X, shape, k, dtype):
    """The start used for a free factor when the other is given: sqrt(mean(X) / k)."""
    avg = np.sqrt(float(X.sum(dtype=np.float64)) / (X.shape[0] * X.shape[1]) / k)
    return np.full(shape, avg, dtype=dtype)


class _Scaling:
    """Fits X / c instead of X when X's magnitude is far from 1, so that no product or power
    overflows or underflows. c is a power of 4, so dividing X by c and the factors by sqrt(c)
    is exact in floating point. With W = sqrt(c) W', H = sqrt(c) H' the objective is
    c^beta [D(X'|W'H') + l1 c^(1/2-beta) |W'|_1 + l2 c^(1-beta) |W'|^2 / 2 + ...]: an exact
    change of variables, so the returned factors solve the caller's problem."""

    SAFE = (1e-8, 1e8)

    def __init__(self, X, beta):
        top = float(X.data.max() if sp.issparse(X) else X.max())
        self.root = 1.0
        if not (self.SAFE[0] <= top <= self.SAFE[1]):
            self.root = 2.0 ** int(np.round(np.log2(top) / 2))   # sqrt(c), a power of 2
        self.c = self.root**2
        self.beta = beta

    @property
    def active(self):
        return self.root != 1.0

    def data(self, X):
        if not self.active:
            return X
        if sp.issparse(X):
            X = X.copy()
            X.data /= X.dtype.type(self.c)
            return X
        return X / X.dtype.type(self.c)

    def penalty(self, p, dtype):
        """The penalty weights of the scaled problem, capped at sqrt(max float) of the dtype
        (an astronomically large weight acts as infinite: that factor is driven to 0)."""
        if not self.active:
            return p
        cap = float(np.sqrt(np.finfo(dtype).max))
        with np.errstate(over="ignore"):
            f1 = np.float64(self.c) ** (0.5 - self.beta)
            f2 = np.float64(self.c) ** (1.0 - self.beta)

        def w(value, f):
            return 0.0 if value == 0 else float(min(value * f, cap))

        return Penalty(w(p.l1["W"], f1), w(p.l2["W"], f2), w(p.l1["H"], f1), w(p.l2["H"], f2))

    def factor_in(self, A):
        return A if (A is None or not self.active) else np.asarray(A) / self.root

    def factor_out(self, A):
        if self.active:
            A *= A.dtype.type(self.root)
        return A

    def loss_out(self, value):
        """The caller's loss; inf if it exceeds the float64 range (e.g. 0.5 ||X-WH||^2 of an X
        near 1e300), while the factors stay finite."""
        if not self.active or value == 0:   # an exact fit is 0 at any scale (not 0 * inf)
            return value
        with np.errstate(over="ignore", under="ignore"):
            return float(np.float64(value) * np.float64(self.c) ** self.beta)

    def callback(self, callback):
        if callback is None or not self.active:
            return callback
        return lambda it, W, H, loss: callback(it, W * self.root, H * self.root,
                                               self.loss_out(loss))


def nmf(X, n_components=None, *, init=None, solver="auto", beta_loss="frobenius", tol=1e-4,
        max_iter=200, random_state=None, alpha_W=0.0, alpha_H="same", l1_ratio=0.0, W=None,
        H=None, update_W=True, update_H=True, n_threads=None, max_time=None, eval_every=10,
        callback=None, verbose=0):
    """Non-negative matrix factorization X ~ W @ H minimizing a beta-divergence.

    Parameters
    ----------
    X : array-like or scipy.sparse matrix/array, shape (m, n), non-negative
        Sparse input of any format is converted once to CSR and never densified. float32 and
        float64 are kept; integer and bool become float64.
    n_components : int or None
        The rank r. None: n (the number of columns), as in scikit-learn.
    init : {"random", "nndsvd", "nndsvda", "nndsvdar", "custom"} or None
        None: "nndsvda" when r <= min(m, n), else "random"; "custom" when W and H are given.
    solver : {"auto", "mu", "hals"}
        "auto": HALS for the Frobenius loss, multiplicative updates otherwise.
    beta_loss : {"frobenius", "kullback-leibler"/"kl", "itakura-saito"/"is"} or float
        The beta of the beta-divergence (2, 1, 0 for the names). beta <= 0 requires X > 0
        everywhere (the divergence is infinite at zeros) and raises ValueError otherwise.
    tol : float >= 0
        Stop when the objective decreased by less than ``tol`` (relative) between two
        evaluations. 0 disables the test.
    max_iter : int >= 1
    random_state : None, int, numpy Generator or RandomState
    alpha_W, alpha_H, l1_ratio : regularization, as in scikit-learn (see ``regularization``);
        ``l1_ratio`` may be a pair (for W, for H).
    W, H : arrays, optional
        Initial factors for init="custom", or the fixed factor when update_W / update_H is False.
    update_W, update_H : bool
        False keeps that factor fixed (it must then be given).
    n_threads : int, -1 or None
        Numba and BLAS threads for this call (None / -1: all); restored afterwards.
    max_time : float, optional
        Stop after this many seconds (checked after each iteration).
    eval_every : int >= 1
        Iterations between evaluations of the objective (tolerance test, history, callback).
    callback : callable(iteration, W, H, loss) -> bool, optional
        Called at each evaluation; returning True stops the fit. W and H are views of the
        working factors: do not modify them.
    verbose : int

    Returns
    -------
    W : ndarray (m, r); H : ndarray (r, n); info : dict with n_iter, loss (objective with
    penalties), data_loss, reconstruction_err (sqrt(2 data_loss), scikit-learn's), loss_history,
    loss_iterations, converged, stop_reason, elapsed, beta, solver, init, n_threads.
    """
    beta = resolve_beta(beta_loss)
    solver_name = resolve_solver(solver, beta)
    X = check_X(X, beta)
    m, n = X.shape
    dtype = X.dtype
    k = check_n_components(n if n_components is None else n_components, (m, n))
    max_iter = check_int("max_iter", max_iter, 1)
    tol = check_real("tol", tol)
    eval_every = check_int("eval_every", eval_every, 1)
    if max_time is not None:
        max_time = check_real("max_time", max_time, 0.0, low_inclusive=False)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback={callback!r} must be callable(iteration, W, H, loss).")
    if not (update_W or update_H):
        raise ValueError("update_W and update_H are both False: there is nothing to fit.")
    penalty = regularization(alpha_W, alpha_H, l1_ratio, (m, n))
    if init is None:
        init = "custom" if (W is not None and H is not None) else (
            "nndsvda" if k <= min(m, n) else "random")
    if init not in INITS:
        raise ValueError(f"init={init!r} is not known; use one of {INITS}.")
    n_threads = resolve_n_threads(n_threads)
    scaling = _Scaling(X, beta)
    check_memory(X, k, beta, copies_X=scaling.active)
    X = scaling.data(X)
    W, H = scaling.factor_in(W), scaling.factor_in(H)
    fit_penalty = scaling.penalty(penalty, dtype)

    with thread_limit(n_threads):   # init: LAPACK/BLAS may use every thread
        if not update_W or not update_H:
            W0 = (check_factor("W", W, (m, k), dtype) if (W is not None or not update_W)
                  else _constant_factor(X, (m, k), k, dtype))
            Ht0 = (check_factor("H", H, (k, n), dtype).T
                   if (H is not None or not update_H)
                   else _constant_factor(X, (n, k), k, dtype))
        elif init == "custom":
            W0 = check_factor("W", W, (m, k), dtype)
            Ht0 = check_factor("H", H, (k, n), dtype).T
        else:
            W0, Ht0 = initialize(X, k, init, random_state, dtype)
    # Cache-line-aligned, C-contiguous factors (the CSR kernels gather their rows, see
    # aligned_empty); for a given H this one copy also makes H^T contiguous.
    W0, Ht0 = aligned_copy(W0), aligned_copy(Ht0)
    with thread_limit(n_threads, blas_threads=1):   # iterations: Numba's pool only
        op = make_operator(X)
        algo = SOLVER_CLASSES[solver_name](op, W0, Ht0, beta, fit_penalty, update_W, update_H)
        result = _driver.run(algo, max_iter=max_iter, tol=tol, eval_every=eval_every,
                             max_time=max_time, callback=scaling.callback(callback),
                             verbose=verbose)
    # The caller gets ordinary arrays that own their memory. The solver, its buffers and X^T
    # are released first, so these copies never raise the peak of the fit.
    W0, Ht0 = algo.W, algo.Ht
    del algo, op
    W_out = scaling.factor_out(np.array(W0))
    del W0
    H_out = scaling.factor_out(np.ascontiguousarray(Ht0.T))
    del Ht0
    result.loss = scaling.loss_out(result.loss)
    result.loss_history = [scaling.loss_out(v) for v in result.loss_history]
    data_loss = max(result.loss - penalty.value(W_out, H_out), 0.0)
    info = result.as_dict()
    info.update(data_loss=data_loss, reconstruction_err=float(np.sqrt(2.0 * data_loss)),
                beta=beta, solver=solver_name, init=init, n_threads=n_threads)
    return W_out, H_out, info
