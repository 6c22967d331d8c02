"""Hypothesis fuzzers over inputs and parameters. Not collected by default (the file name does
not start with test_): tests/test_robustness.py runs it in a child process, so a crash in a
kernel fails a test instead of killing the run. Profiles: FASTNMF_HYPOTHESIS_PROFILE=fast
(60 examples per fuzzer, the default run) or long (1500, under the slow marker)."""
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings, strategies as st

import fastnmf
from conftest import random_problem

settings.register_profile("fast", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FASTNMF_HYPOTHESIS_PROFILE", "fast"))

BETAS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, -0.5, 2.5]


@st.composite
def problems(draw):
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-300, 1e-30, 1e-5, 1.0, 1e6, 1e30, 1e300]))
    X = rng.gamma(0.7, 1.0, (m, n)) * (rng.random((m, n)) < density) * scale
    dtype = draw(st.sampled_from(["float64", "float32", "int64", "bool"]))
    if dtype == "float32":
        with np.errstate(over="ignore", under="ignore"):
            X = X.astype(np.float32)
    elif dtype == "int64":
        X = np.round(X / scale * 3).astype(np.int64)
    elif dtype == "bool":
        X = X > 0
    fmt = draw(st.sampled_from(["dense", "csr", "coo", "csc", "fortran"]))
    if fmt == "fortran":
        X = np.asfortranarray(X)
    elif fmt != "dense":
        X = sp.csr_matrix(X).asformat(fmt)
    return X


@given(X=problems(), k=st.integers(1, 4), beta=st.sampled_from(BETAS),
       solver=st.sampled_from(["auto", "mu", "hals"]),
       alpha=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 100))
def test_fuzz_fit_is_an_error_or_a_sound_result(X, k, beta, solver, alpha, seed):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W, H, info = fastnmf.nmf(X, k, beta_loss=beta, solver=solver, alpha_W=alpha,
                                     init="random", random_state=seed, max_iter=15, tol=0,
                                     eval_every=1)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        # a documented refusal names what is wrong
        assert any(word in msg for word in ("X", "beta_loss", "solver", "n_components")), msg
        return
    m, n = X.shape
    assert W.shape == (m, k) and H.shape == (k, n)
    assert np.isfinite(W).all() and np.isfinite(H).all()
    assert (W >= 0).all() and (H >= 0).all()
    h = np.asarray(info["loss_history"])
    assert not np.isnan(h).any()
    finite = h[np.isfinite(h)]
    if finite.size == h.size and (solver != "hals" or beta == 2):
        # MU with an L2 penalty and beta != 2 is the usual heuristic (den + l2 F, as in
        # scikit-learn), not a majorization-minimization step: no monotonicity promised
        if alpha == 0 or beta == 2:
            # "beyond rounding": the loss is a sum of terms as large as the data's own
            Xd = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
            with np.errstate(all="ignore"):
                if beta == 2:
                    mag = 0.5 * np.sum(Xd**2)
                elif beta == 1:
                    mag = np.sum(Xd) * (1 + np.abs(np.log(Xd.max())))
                elif beta == 0:
                    mag = Xd.size
                else:
                    mag = np.sum(Xd**beta) / abs(beta * (beta - 1))
            eps = np.finfo(W.dtype).eps
            bound = 1e3 * eps * (np.nan_to_num(mag, posinf=1e308) + h[0])
            assert np.all(np.diff(h) <= bound + 1e-300), (np.diff(h).max(), bound)


@given(k=st.one_of(st.integers(-3, 0), st.floats(0.5, 3.5), st.just(None),
                   st.text(max_size=2)),
       tol=st.one_of(st.floats(-1, -1e-9), st.just(float("nan")), st.just(float("inf"))),
       max_iter=st.one_of(st.integers(-5, 0), st.floats(1.5, 3.5)),
       which=st.sampled_from(["k", "tol", "max_iter"]))
def test_fuzz_bad_parameters_name_themselves(k, tol, max_iter, which):
    X = random_problem(m=10, n=8, seed=0)
    kwargs = {"k": dict(n_components=k), "tol": dict(n_components=2, tol=tol),
              "max_iter": dict(n_components=2, max_iter=max_iter)}[which]
    if which == "k" and k is None:
        return  # None is allowed (all columns)
    name = {"k": "n_components", "tol": "tol", "max_iter": "max_iter"}[which]
    with pytest.raises(ValueError, match=name):
        fastnmf.nmf(X, **kwargs)




@given(m=st.integers(1, 6), n=st.integers(1, 6), k=st.integers(1, 3),
       wshape=st.tuples(st.integers(0, 7), st.integers(0, 4)),
       fill=st.sampled_from([1.0, -1.0, float("nan"), float("inf"), 0.0]),
       dtype=st.sampled_from(["float64", "float32", "int32", "complex128", "float16", "U1"]),
       which=st.sampled_from(["W", "H"]))
def test_fuzz_custom_factors(m, n, k, wshape, fill, dtype, which):
    X = np.random.default_rng(m * 7 + n).random((m, n)) + 0.1
    good = {"W": np.ones((m, k)), "H": np.ones((k, n))}
    shape = wshape if which == "W" else wshape[::-1]
    if dtype == "U1":
        bad = np.full(shape, "a")
    else:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bad = np.full(shape, fill).astype(dtype)
    good[which] = bad
    valid = shape == ((m, k) if which == "W" else (k, n))
    valid = valid and dtype in ("float64", "float32", "int32") and fill >= 0 \
        and np.isfinite(fill)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W, H, _ = fastnmf.nmf(X, k, init="custom", max_iter=3, tol=0, **good)
    except (ValueError, TypeError) as exc:
        assert not valid, exc
        assert which in str(exc)
        return
    assert valid
    assert np.isfinite(W).all() and np.isfinite(H).all()
