"""Against scikit-learn (a test extra, not a runtime dependency): same updates, same losses."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastnmf
from conftest import as_format, random_problem

skd = pytest.importorskip("sklearn.decomposition")


def _start(X, r, seed=0):
    rng = np.random.default_rng(seed)
    avg = np.sqrt(X.mean() / r)
    return (avg * rng.random((X.shape[0], r)) + 0.01, avg * rng.random((r, X.shape[1])) + 0.01)


def _sk(X, W0, H0, iters, **kw):
    est = skd.NMF(W0.shape[1], init="custom", max_iter=iters, tol=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = est.fit_transform(X, W=W0.copy(), H=H0.copy())
    return W, est.components_, est


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("beta_loss,reg", [("frobenius", {}), ("kullback-leibler", {}),
                                           ("frobenius", dict(alpha_W=0.01, l1_ratio=0.5)),
                                           ("kullback-leibler", dict(alpha_W=0.001, l1_ratio=0.3))])
def test_mu_follows_sklearn_trajectory(fmt, beta_loss, reg):
    X = random_problem(m=50, n=35, seed=1, density=0.4)
    X[:, 1] += 0.0  # keep the empty column
    W0, H0 = _start(X, 5)
    Xf = as_format(X, fmt)
    for iters in (1, 3, 10, 30):
        Ws, Hs, est = _sk(Xf, W0, H0, iters, solver="mu", beta_loss=beta_loss, **reg)
        Wf, Hf, info = fastnmf.nmf(Xf, 5, W=W0, H=H0, init="custom", solver="mu",
                                   beta_loss=beta_loss, max_iter=iters, tol=0, **reg)
        np.testing.assert_allclose(Wf, Ws, rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(Hf, Hs, rtol=1e-6, atol=1e-10)
        assert info["reconstruction_err"] == pytest.approx(est.reconstruction_err_, rel=1e-6)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_hals_with_one_sweep_is_sklearn_cd(fmt, monkeypatch):
    # without the inner repetitions, HALS is exactly scikit-learn's coordinate descent
    import fastnmf.solvers.hals as hals
    monkeypatch.setattr(hals, "MAX_SWEEPS", 1)
    X = random_problem(m=70, n=50, r=5, seed=5, density=0.3)
    W0, H0 = _start(X, 5)
    for iters in (1, 4, 25):
        Ws, Hs, est = _sk(as_format(X, fmt), W0, H0, iters, solver="cd")
        Wf, Hf, _ = fastnmf.nmf(as_format(X, fmt), 5, W=W0, H=H0, solver="hals",
                                max_iter=iters, tol=0)
        np.testing.assert_allclose(Wf, Ws, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(Hf, Hs, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_accelerated_hals_at_least_as_good_as_sklearn_cd(fmt):
    # At equal outer iterations the accelerated HALS is lower in the large majority of
    # checkpoints; where paths split towards different local minima it may trail slightly.
    ratios = []
    for seed in range(4):
        X = random_problem(m=120, n=80, r=6, seed=seed, density=0.3)
        W0, H0 = _start(X, 6, seed)
        Xf = as_format(X, fmt)
        for iters in (2, 5, 20, 60):
            _, _, est = _sk(Xf, W0, H0, iters, solver="cd")
            _, _, info = fastnmf.nmf(Xf, 6, W=W0, H=H0, solver="hals", max_iter=iters, tol=0)
            ratios.append(info["reconstruction_err"] / est.reconstruction_err_)
    ratios = np.array(ratios)
    assert np.median(ratios) < 1.0
    assert np.mean(ratios <= 1.0 + 1e-9) >= 0.75
    assert ratios.max() < 1.0 + 1e-3


def test_hals_with_penalties_matches_sklearn_cd_objective_scale():
    # same penalised problem: after many iterations both reach (nearly) the same optimum value
    X = random_problem(m=80, n=60, r=4, seed=3, density=0.5)
    W0, H0 = _start(X, 4)
    reg = dict(alpha_W=0.01, alpha_H=0.02, l1_ratio=0.5)
    Ws, Hs, _ = _sk(X, W0, H0, 500, solver="cd", **reg)
    Wf, Hf, info = fastnmf.nmf(X, 4, W=W0, H=H0, solver="hals", max_iter=500, tol=0, **reg)
    m, n = X.shape

    def objective(W, H):
        return (0.5 * np.sum((X - W @ H) ** 2)
                + n * 0.01 * (0.5 * W.sum() + 0.25 * (W**2).sum())
                + m * 0.02 * (0.5 * H.sum() + 0.25 * (H**2).sum()))

    assert info["loss"] == pytest.approx(objective(Wf, Hf), rel=1e-8)
    assert objective(Wf, Hf) <= objective(Ws, Hs) * (1 + 1e-3)


def test_estimator_is_a_drop_in_for_sklearn_names():
    X = sp.csr_matrix(random_problem(m=60, n=40, seed=4, density=0.3))
    params = dict(n_components=5, init="nndsvda", beta_loss="kullback-leibler", solver="mu",
                  max_iter=50, tol=1e-4, alpha_W=0.0, alpha_H="same", l1_ratio=0.0,
                  random_state=0)
    ours = fastnmf.NMF(**params)
    theirs = skd.NMF(**params)
    W = ours.fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit_transform(X)
    assert W.shape == (60, 5) and ours.components_.shape == theirs.components_.shape
    assert set(theirs.get_params()) >= set(ours.get_params()) - {
        "n_threads", "max_time", "eval_every", "callback"}
