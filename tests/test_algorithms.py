"""Algorithm invariants of whole fits: monotone losses, storage/dtype/thread independence,
reported losses equal to the plain NumPy formula."""
import numba
import numpy as np
import pytest
import scipy.sparse as sp

import fastnmf
from conftest import as_format, random_problem

BETAS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


def beta_divergence(X, Y, beta):
    """Plain NumPy D_beta(X | Y) over all entries (0 log 0 = 0), 0.5 ||X-Y||^2 for beta=2."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if beta == 2:
        return 0.5 * np.sum((X - Y) ** 2)
    if beta == 1:
        nz = X > 0
        return np.sum(X[nz] * np.log(X[nz] / Y[nz])) - X.sum() + Y.sum()
    if beta == 0:
        return np.sum(X / Y - np.log(X / Y) - 1)
    nz = X > 0  # at X = 0 the divergence is Y^beta / beta (no 0 * Y^(beta-1) term)
    cross = np.sum(X[nz] * Y[nz] ** (beta - 1))
    return (np.sum(X**beta) + (beta - 1) * np.sum(Y**beta) - beta * cross) / (beta * (beta - 1))


def _X_for(beta, fmt, seed=0, dtype=np.float64):
    return as_format(random_problem(seed=seed, positive=beta <= 0, dtype=dtype), fmt)


def _nonincreasing(h, rel=1e-9):
    h = np.asarray(h)
    return np.all(np.diff(h) <= rel * np.abs(h[:-1]) + 1e-12)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("beta", BETAS)
def test_mu_never_increases_loss(beta, fmt):
    for seed in range(5):
        X = _X_for(beta, fmt, seed)
        _, _, info = fastnmf.nmf(X, 4, beta_loss=beta, solver="mu", init="random",
                                 random_state=seed, max_iter=40, tol=0, eval_every=1)
        assert _nonincreasing(info["loss_history"]), (seed, np.diff(info["loss_history"]).max())
        assert info["loss_history"][-1] < info["loss_history"][0]


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("reg", [dict(), dict(alpha_W=0.01, l1_ratio=0.0),
                                 dict(alpha_W=0.01, l1_ratio=1.0),
                                 dict(alpha_W=0.02, alpha_H=0.005, l1_ratio=(0.3, 0.8))])
def test_hals_never_increases_objective(fmt, reg):
    for seed in range(5):
        X = _X_for(2.0, fmt, seed)
        _, _, info = fastnmf.nmf(X, 5, solver="hals", init="random", random_state=seed,
                                 max_iter=40, tol=0, eval_every=1, **reg)
        assert _nonincreasing(info["loss_history"])


@pytest.mark.parametrize("beta,reg", [
    (2.0, dict(alpha_W=0.01, l1_ratio=0.0)),                 # L2: exact MM for beta = 2
    (2.0, dict(alpha_W=0.01, alpha_H=0.03, l1_ratio=0.5)),
    (1.0, dict(alpha_W=0.01, alpha_H=0.03, l1_ratio=1.0)),   # L1: exact MM for any beta
    (0.5, dict(alpha_W=0.01, alpha_H=0.03, l1_ratio=1.0)),
    (3.0, dict(alpha_W=0.01, alpha_H=0.03, l1_ratio=1.0)),
])
def test_mu_with_penalties_never_increases_objective(beta, reg):
    X = _X_for(beta, "csr", 3)
    _, _, info = fastnmf.nmf(X, 4, beta_loss=beta, solver="mu", init="random",
                             random_state=1, max_iter=40, tol=0, eval_every=1, **reg)
    assert _nonincreasing(info["loss_history"])


@pytest.mark.parametrize("beta", BETAS)
def test_reported_loss_matches_numpy_formula(beta):
    X = _X_for(beta, "dense", 4)
    for fmt in ("dense", "csr"):
        W, H, info = fastnmf.nmf(as_format(X, fmt), 4, beta_loss=beta, init="random",
                                 random_state=0, max_iter=15, tol=0)
        expected = beta_divergence(X, W @ H, beta)
        assert info["data_loss"] == pytest.approx(expected, rel=1e-8)
        assert info["loss"] == pytest.approx(expected, rel=1e-8)  # no penalty


def test_objective_includes_penalty_with_sklearn_scaling():
    X = _X_for(2.0, "dense", 5)
    m, n = X.shape
    aW, aH, rho = 0.02, 0.01, 0.4
    W, H, info = fastnmf.nmf(X, 4, alpha_W=aW, alpha_H=aH, l1_ratio=rho, init="random",
                             random_state=0, max_iter=10, tol=0)
    pen = (n * aW * (rho * W.sum() + 0.5 * (1 - rho) * (W**2).sum())
           + m * aH * (rho * H.sum() + 0.5 * (1 - rho) * (H**2).sum()))
    assert info["loss"] == pytest.approx(beta_divergence(X, W @ H, 2) + pen, rel=1e-8)
    assert info["reconstruction_err"] == pytest.approx(np.linalg.norm(X - W @ H), rel=1e-7)


@pytest.mark.parametrize("solver,beta", [("hals", 2.0), ("mu", 2.0), ("mu", 1.0),
                                         ("mu", 0.5), ("mu", 3.0), ("mu", 0.0)])
def test_dense_and_csr_give_the_same_factors(solver, beta):
    X = _X_for(beta, "dense", 6)
    kw = dict(beta_loss=beta, solver=solver, init="nndsvda", max_iter=30, tol=0)
    Wd, Hd, _ = fastnmf.nmf(X, 4, **kw)
    Ws, Hs, _ = fastnmf.nmf(sp.csr_matrix(X), 4, **kw)
    np.testing.assert_allclose(Wd @ Hd, Ws @ Hs, rtol=1e-6, atol=1e-9 * np.abs(X).max())
    np.testing.assert_allclose(Wd, Ws, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("solver,beta", [("hals", 2.0), ("mu", 2.0), ("mu", 1.0), ("mu", 1.5)])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_float32_agrees_with_float64_and_stays_float32(solver, beta, fmt):
    X = random_problem(seed=7)
    W0 = np.random.default_rng(0).random((X.shape[0], 4)) + 0.1
    H0 = np.random.default_rng(1).random((4, X.shape[1])) + 0.1
    kw = dict(beta_loss=beta, solver=solver, init="custom", max_iter=20, tol=0)
    W64, H64, i64 = fastnmf.nmf(as_format(X, fmt), 4, W=W0, H=H0, **kw)
    W32, H32, i32 = fastnmf.nmf(as_format(X.astype(np.float32), fmt), 4, W=W0, H=H0, **kw)
    assert W32.dtype == np.float32 and H32.dtype == np.float32
    assert W64.dtype == np.float64 and H64.dtype == np.float64
    assert i32["loss"] == pytest.approx(i64["loss"], rel=1e-4)
    np.testing.assert_allclose(W32 @ H32, W64 @ H64, rtol=2e-3, atol=1e-4 * X.max())


@pytest.mark.parametrize("init", ["random", "nndsvdar", "nndsvda"])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_same_seed_same_result_bitwise(init, fmt):
    X = _X_for(1.0, fmt, 8)
    a = fastnmf.nmf(X, 4, beta_loss="kl", init=init, random_state=42, max_iter=20, tol=0)
    b = fastnmf.nmf(X, 4, beta_loss="kl", init=init, random_state=42, max_iter=20, tol=0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    if init != "nndsvda":
        c = fastnmf.nmf(X, 4, beta_loss="kl", init=init, random_state=43, max_iter=20, tol=0)
        assert not np.array_equal(a[0], c[0])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("solver,beta", [("hals", 2.0), ("mu", 2.0), ("mu", 1.0), ("mu", 0.5)])
def test_sparse_fit_is_bitwise_identical_across_thread_counts(solver, beta, kernel_rule):
    X = sp.csr_matrix(random_problem(m=300, n=200, seed=9, density=0.1))
    kw = dict(beta_loss=beta, solver=solver, init="random", random_state=0, max_iter=15, tol=0)
    W1, H1, _ = fastnmf.nmf(X, 6, n_threads=1, **kw)
    W2, H2, _ = fastnmf.nmf(X, 6, n_threads=2, **kw)
    assert np.array_equal(W1, W2) and np.array_equal(H1, H2)


def test_hals_reaches_exact_factorization_of_planted_model():
    rng = np.random.default_rng(0)
    W0 = rng.random((60, 3)) * (rng.random((60, 3)) < 0.7)
    H0 = rng.random((3, 40)) * (rng.random((3, 40)) < 0.7)
    X = W0 @ H0
    W, H, info = fastnmf.nmf(X, 3, init="nndsvd", max_iter=2000, tol=1e-12)
    assert np.linalg.norm(X - W @ H) < 1e-4 * np.linalg.norm(X)


def test_kl_mu_preserves_total_mass_like_the_theory_says():
    # After a KL MU update of H, sum(WH) == sum(X) (Lee & Seung): a property of the update
    # that an independent formula checks.
    X = _X_for(1.0, "csr", 10)
    W, H, _ = fastnmf.nmf(X, 4, beta_loss="kl", init="random", random_state=0, max_iter=5,
                          tol=0)
    assert (W @ H).sum() == pytest.approx(X.sum(), rel=1e-10)
