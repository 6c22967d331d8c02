"""Bad input gets a clear error naming the parameter; odd-but-valid input works."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastnmf
from conftest import random_problem

X = random_problem(m=20, n=15, seed=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_loss="bogus"), "beta_loss='bogus'"),
    (dict(beta_loss=float("nan")), "beta_loss=nan"),
    (dict(solver="newton"), "solver='newton'"),
    (dict(solver="hals", beta_loss="kl"), "solver='hals' minimizes the Frobenius"),
    (dict(init="svd"), "init='svd'"),
    (dict(tol=-1.0), "tol=-1.0 must be >= 0"),
    (dict(max_iter=0), "max_iter=0 must be >= 1"),
    (dict(max_iter=2.5), "max_iter=2.5 must be an integer"),
    (dict(alpha_W=-0.1), "alpha_W=-0.1"),
    (dict(alpha_H="other"), "alpha_H='other'"),
    (dict(l1_ratio=1.5), "l1_ratio=1.5"),
    (dict(l1_ratio=(0.1, 0.2, 0.3)), "l1_ratio="),
    (dict(eval_every=0), "eval_every=0"),
    (dict(max_time=0), "max_time=0"),
    (dict(n_threads=0), "n_threads=0"),
    (dict(random_state="seed"), "random_state='seed'"),
])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        fastnmf.nmf(X, 3, **kwargs)


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_rank(k):
    with pytest.raises(ValueError, match="n_components"):
        fastnmf.nmf(X, k)


def test_overcomplete_rank_warns():
    with pytest.warns(UserWarning, match="n_components=16 exceeds min"):
        fastnmf.nmf(X, 16, max_iter=2, tol=0)


@pytest.mark.parametrize("bad,match", [
    (-X, "negative entries"),
    (np.where(X > 0, np.nan, 0.0), "NaN or infinity"),
    (np.zeros((4, 3)), "all zeros"),
    (np.zeros((0, 3)), "at least one row"),
    (np.ones(5), "2-D"),
    (X.astype(np.complex128), "dtype complex128"),
    (X.astype(np.float16), "dtype float16"),
    (X.astype(object), "dtype object"),
    (np.full((3, 3), "a"), "dtype <U1"),
])
def test_bad_X(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastnmf.nmf(bad, 2)
    if bad.ndim == 2 and bad.dtype.kind == "f" and bad.size:
        with pytest.raises((ValueError, TypeError), match=match):
            fastnmf.nmf(sp.csr_matrix(bad), 2)


def test_is_with_zeros_is_an_error_not_nan():
    with pytest.raises(ValueError, match="beta_loss=0 .*zeros"):
        fastnmf.nmf(X, 2, beta_loss="is")
    with pytest.raises(ValueError, match="beta_loss=-0.5"):
        fastnmf.nmf(sp.csr_matrix(X), 2, beta_loss=-0.5)  # sparse: missing entries are zeros
    stored_zero = sp.csr_matrix(X + 1.0)
    stored_zero.data[3] = 0.0
    with pytest.raises(ValueError, match="beta_loss=0 "):
        fastnmf.nmf(stored_zero, 2, beta_loss=0)
    # a sparse matrix that stores every entry has no zeros: IS works on it
    W, H, _ = fastnmf.nmf(sp.csr_matrix(X + 1.0), 2, beta_loss="is", max_iter=5, tol=0)
    assert np.isfinite(W).all()
    W, H, _ = fastnmf.nmf(X + 0.1, 2, beta_loss="is", max_iter=20, tol=0)
    assert np.isfinite(W).all() and np.isfinite(H).all()


def test_malformed_csr_is_rejected_before_any_kernel():
    A = sp.csr_matrix(X)
    bad = sp.csr_matrix((A.data.copy(), A.indices.copy(), A.indptr.copy()), shape=A.shape)
    bad.indices[3] = 999
    with pytest.raises(ValueError, match="malformed sparse matrix"):
        fastnmf.nmf(bad, 2)


@pytest.mark.parametrize("which,arr,match", [
    ("W", np.ones((20, 4)), r"W has shape \(20, 4\); expected \(20, 3\)"),
    ("H", -np.ones((3, 15)), "H has negative entries"),
    ("W", np.full((20, 3), np.nan), "W contains NaN"),
    ("H", np.ones((3, 15), dtype=complex), "H has dtype complex128"),
])
def test_bad_custom_factors(which, arr, match):
    good = dict(W=np.ones((20, 3)), H=np.ones((3, 15)))
    good[which] = arr
    with pytest.raises((ValueError, TypeError), match=match):
        fastnmf.nmf(X, 3, init="custom", **good)


@pytest.mark.parametrize("make", [
    lambda A: sp.coo_matrix(A), lambda A: sp.csc_matrix(A), lambda A: sp.lil_matrix(A),
    lambda A: sp.dia_matrix(A), lambda A: sp.bsr_matrix(A), lambda A: sp.csr_array(A),
    lambda A: np.asfortranarray(A), lambda A: A[:, ::1][::1].copy().T.T,
    lambda A: (A > 1).astype(int) + 0, lambda A: A > 1, lambda A: np.asmatrix(A),
])
def test_other_input_kinds_work(make):
    W, H, info = fastnmf.nmf(make(X), 3, max_iter=10, tol=0)
    assert np.isfinite(W).all() and np.isfinite(H).all() and info["loss"] >= 0


def test_input_is_never_modified():
    A = sp.csr_matrix(X)
    A = A[:, np.random.default_rng(0).permutation(15)]  # unsorted indices
    A.has_sorted_indices = False
    snap = (A.data.copy(), A.indices.copy(), A.indptr.copy())
    D = np.array(X)
    D.setflags(write=False)
    fastnmf.nmf(A, 3, beta_loss="kl", max_iter=5, tol=0)
    fastnmf.nmf(D, 3, beta_loss=1.5, max_iter=5, tol=0)
    assert all(np.array_equal(a, b) for a, b in zip(snap, (A.data, A.indices, A.indptr)))


def test_duplicates_are_summed_like_scipy():
    vals = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    cols = np.array([1, 1, 0, 2, 2])
    A = sp.csr_matrix((vals, cols, np.array([0, 2, 3, 5])), shape=(3, 3))
    _, _, info = fastnmf.nmf(A, 2, init="random", random_state=0, max_iter=5, tol=0)
    W, H, _ = fastnmf.nmf(A.toarray(), 2, init="random", random_state=0, max_iter=5, tol=0)
    dense = np.array([[0, 3.0, 0], [3.0, 0, 0], [0, 0, 9.0]])
    assert np.array_equal(A.toarray(), dense)
    assert info["loss"] == pytest.approx(0.5 * np.sum((dense - W @ H) ** 2), rel=1e-8)


@pytest.mark.parametrize("value,limit", [("0", 0), (" 123 ", 123), ("-1", None), ("1e6", None),
                                         ("many", None)])
def test_rank_kernel_limit_from_the_environment(value, limit):
    """FASTNMF_RANK_KERNEL_MIN_WORK sets the rank rule's limit at import; anything but a
    non-negative integer stops the import with an error naming the variable."""
    import os
    import subprocess
    import sys
    code = "import fastnmf._data as D; print(D.RANK_KERNEL_MIN_WORK)"
    env = dict(os.environ, FASTNMF_RANK_KERNEL_MIN_WORK=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if limit is None:
        assert out.returncode != 0
        assert "FASTNMF_RANK_KERNEL_MIN_WORK" in out.stderr
        assert "non-negative integer" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == limit
