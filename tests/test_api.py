"""The user-facing API: estimator protocol, driver stop rules, fixed factors, threads, init."""
import warnings

import numba
import numpy as np
import pytest
import scipy.sparse as sp

import fastnmf
from fastnmf._init import nndsvd, randomized_svd
from conftest import as_format, random_problem


def test_estimator_attributes_and_round_trip():
    X = random_problem(m=50, n=30, seed=0)
    est = fastnmf.NMF(4, init="nndsvda", max_iter=100, tol=0)
    W = est.fit_transform(X)
    H = est.components_
    assert W.shape == (50, 4) and H.shape == (4, 30)
    assert est.n_components_ == 4 and est.n_features_in_ == 30 and est.n_iter_ == 100
    assert (W >= 0).all() and (H >= 0).all()
    assert est.reconstruction_err_ == pytest.approx(np.linalg.norm(X - W @ H), rel=1e-7)
    assert est.loss_history_[-1] == pytest.approx(0.5 * est.reconstruction_err_**2, rel=1e-9)
    np.testing.assert_allclose(est.inverse_transform(W), W @ H)
    assert fastnmf.NMF(4).fit(X) is not None


def test_get_set_params_and_repr():
    est = fastnmf.NMF(3, beta_loss="kl", n_threads=1)
    p = est.get_params()
    assert p["n_components"] == 3 and p["beta_loss"] == "kl" and p["n_threads"] == 1
    assert est.set_params(max_iter=7) is est and est.max_iter == 7
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        est.set_params(bogus=1)
    assert "beta_loss='kl'" in repr(est) and "max_iter=7" in repr(est)


def test_transform_solves_for_W_with_H_fixed():
    rng = np.random.default_rng(1)
    W0, H0 = rng.random((40, 3)), rng.random((3, 25))
    est = fastnmf.NMF(3, max_iter=500, tol=0).fit(W0 @ H0)
    W_new = rng.random((10, 3))
    X_new = W_new @ est.components_
    W = est.transform(X_new)
    # H fixed, X_new exactly representable: the (unique, H full rank) NNLS solution is W_new
    np.testing.assert_allclose(W, W_new, rtol=1e-4, atol=1e-6)
    W_kl = fastnmf.NMF(3, beta_loss="kl", max_iter=300, tol=0).fit(W0 @ H0)
    assert W_kl.transform(sp.csr_matrix(X_new)).shape == (10, 3)


def test_transform_errors():
    est = fastnmf.NMF(2)
    with pytest.raises(fastnmf.NotFittedError, match="not fitted"):
        est.transform(np.ones((3, 4)))
    est.fit(random_problem(m=20, n=10))
    with pytest.raises(ValueError, match=r"expects \(n_samples, 10\)"):
        est.transform(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"expects \(n_samples, 2\)"):
        est.inverse_transform(np.ones((3, 4)))


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_fixed_factor_is_left_untouched(fmt):
    X = as_format(random_problem(seed=2), fmt)
    rng = np.random.default_rng(0)
    H = rng.random((4, 30))
    W, H_out, _ = fastnmf.nmf(X, 4, H=H, update_H=False, beta_loss="kl", max_iter=20, tol=0)
    assert np.array_equal(H_out, H)
    W_fixed = rng.random((40, 4))
    W_out, H2, _ = fastnmf.nmf(X, 4, W=W_fixed, update_W=False, max_iter=20, tol=0)
    assert np.array_equal(W_out, W_fixed)
    with pytest.raises(ValueError, match="both False"):
        fastnmf.nmf(X, 4, W=W_fixed, H=H, update_W=False, update_H=False)
    with pytest.raises(ValueError, match="needs H"):
        fastnmf.nmf(X, 4, update_H=False)


def test_estimator_fit_with_fixed_components():
    X = random_problem(seed=3)
    H = np.random.default_rng(0).random((4, 30))
    est = fastnmf.NMF(4, max_iter=10, tol=0)
    est.fit(X, H=H, update_H=False)
    assert np.array_equal(est.components_, H)


def test_tol_stops_early_and_max_iter_warns():
    X = random_problem(seed=4)
    _, _, info = fastnmf.nmf(X, 4, tol=1e-2, max_iter=1000)
    assert info["converged"] and info["stop_reason"] == "tol" and info["n_iter"] < 1000
    h = info["loss_history"]
    assert (h[-2] - h[-1]) <= 1e-2 * h[-2]
    with pytest.warns(fastnmf.ConvergenceWarning, match="max_iter|Maximum number"):
        fastnmf.nmf(X, 4, tol=1e-12, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastnmf.nmf(X, 4, tol=0, max_iter=5)  # tol=0: fixed work, no warning


def test_callback_sees_iterates_and_can_stop():
    X = random_problem(seed=5)
    seen = []

    def cb(it, W, H, loss):
        seen.append((it, loss, W.shape, H.shape))
        return it >= 6

    _, _, info = fastnmf.nmf(X, 4, beta_loss="kl", tol=0, max_iter=100, eval_every=2,
                             callback=cb)
    assert [s[0] for s in seen] == [2, 4, 6] and info["n_iter"] == 6
    assert info["stop_reason"] == "callback"
    assert seen[0][2:] == ((40, 4), (4, 30))
    assert all(np.isfinite(s[1]) for s in seen)


def test_max_time_and_history_cadence():
    X = random_problem(seed=6)
    _, _, info = fastnmf.nmf(X, 4, tol=0, max_iter=10**6, max_time=0.2)
    assert info["stop_reason"] == "max_time" and 0.2 <= info["elapsed"] < 5
    _, _, info = fastnmf.nmf(X, 4, tol=0, max_iter=25, eval_every=10)
    assert info["loss_iterations"] == [0, 10, 20, 25]


def test_verbose_prints_progress(capsys):
    fastnmf.nmf(random_problem(seed=7), 3, tol=0, max_iter=20, verbose=1)
    out = capsys.readouterr().out
    assert "iter      0" in out and "iter     20" in out


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_threads_are_restored_also_after_errors():
    from threadpoolctl import threadpool_info

    before = numba.get_num_threads()
    blas_before = [p["num_threads"] for p in threadpool_info()]
    seen = {}

    def cb(it, W, H, loss):
        seen["numba"] = numba.get_num_threads()
        seen["blas"] = [p["num_threads"] for p in threadpool_info()]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fastnmf.nmf(random_problem(seed=8), 3, n_threads=1, callback=cb, eval_every=1)
    assert seen["numba"] == 1 and all(n == 1 for n in seen["blas"])
    assert numba.get_num_threads() == before
    assert [p["num_threads"] for p in threadpool_info()] == blas_before


def test_function_api_returns_info():
    W, H, info = fastnmf.nmf(sp.coo_matrix(random_problem(seed=9)), 3, max_iter=10, tol=0)
    for key in ("n_iter", "loss", "data_loss", "reconstruction_err", "loss_history",
                "converged", "stop_reason", "elapsed", "beta", "solver", "init", "n_threads"):
        assert key in info
    assert info["solver"] == "hals" and info["beta"] == 2.0 and info["init"] == "nndsvda"
    assert fastnmf.nmf(random_problem(seed=9), 3, beta_loss="kl", max_iter=2,
                       tol=0)[2]["solver"] == "mu"


# -- initialization -----------------------------------------------------------------------
def test_randomized_svd_matches_lapack_on_low_rank_matrix():
    rng = np.random.default_rng(0)
    A = rng.random((300, 5)) @ rng.random((5, 200)) + 1e-3 * rng.random((300, 200))
    U, s, Vt = randomized_svd(sp.csr_matrix(A), 5, rng)
    s_ref = np.linalg.svd(A, compute_uv=False)[:5]
    np.testing.assert_allclose(s, s_ref, rtol=1e-8)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-10)
    np.testing.assert_allclose((U * s) @ Vt, A, atol=0.05 * np.abs(A).max())


def test_nndsvd_is_exact_for_a_nonnegative_rank_one_matrix():
    rng = np.random.default_rng(1)
    u, v = rng.random(30) + 0.1, rng.random(20) + 0.1
    X = np.outer(u, v)
    W, H = nndsvd(X, 1, rng)
    np.testing.assert_allclose(W @ H, X, rtol=1e-10)


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda", "nndsvdar"])
def test_init_properties(init):
    X = random_problem(m=50, n=40, seed=10)
    W, H, info = fastnmf.nmf(X, 5, init=init, max_iter=1, tol=0, random_state=0)
    assert info["init"] == init
    from fastnmf._init import initialize
    W0, Ht0 = initialize(X, 5, init, 0, np.dtype(np.float64))
    assert (W0 >= 0).all() and (Ht0 >= 0).all() and W0.shape == (50, 5) and Ht0.shape == (40, 5)
    if init == "nndsvda":
        assert (W0 > 0).all() and (Ht0 > 0).all()
    if init == "random":
        # scaled so that W H has the mean of X in expectation: E|N(0,1)|^2 = 2/pi
        assert np.mean(W0 @ Ht0.T) == pytest.approx(X.mean() * 2 / np.pi, rel=0.2)
    if init == "nndsvd":
        # the first NNDSVD pair is the (non-negative, Perron) leading singular pair of X
        U, s, Vt = np.linalg.svd(X)
        np.testing.assert_allclose(np.outer(W0[:, 0], Ht0[:, 0]), s[0] * np.outer(U[:, 0], Vt[0]),
                                   rtol=1e-8, atol=1e-10)


def test_every_blas_is_single_threaded_during_iterations_in_a_fresh_process():
    # Numba's np.dot calls SciPy's BLAS, a second OpenBLAS; if it is loaded after the
    # thread limit is set it runs unlimited inside Numba's parallel blocks (oversubscription,
    # measured 40x slower). A fresh interpreter is the only honest check of import order.
    import subprocess
    import sys
    code = (
        "import numpy as np, fastnmf, json\n"
        "from threadpoolctl import threadpool_info\n"
        "seen = []\n"
        "def cb(it, W, H, loss):\n"
        "    seen.extend((p['filepath'], p['num_threads']) for p in threadpool_info()\n"
        "                if p['user_api'] == 'blas')\n"
        "X = np.random.default_rng(0).random((300, 200))\n"
        "fastnmf.nmf(X, 5, beta_loss='kl', n_threads=2, max_iter=2, tol=0, eval_every=1,\n"
        "            callback=cb)\n"
        "print(json.dumps(seen))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    import json
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen and all(n == 1 for _, n in seen), seen
    assert any("scipy" in path for path, _ in seen), "SciPy's BLAS not loaded/limited"
