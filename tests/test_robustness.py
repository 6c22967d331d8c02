"""Robustness: property-based fuzzing of inputs and parameters, crash isolation for malformed
sparse structure, interruption, memory, extreme scales, degenerate shapes."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastnmf
from conftest import random_problem

FUZZ_FILE = os.path.join(os.path.dirname(__file__), "fuzz_inputs.py")


def _run_fuzz(profile, timeout):
    """Run the hypothesis fuzzers in a child process: a segfault in a kernel fails this test
    with the child's output instead of killing the test run."""
    env = dict(os.environ, FASTNMF_HYPOTHESIS_PROFILE=profile)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "", FUZZ_FILE], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:])
    assert " passed" in proc.stdout


def test_fuzz_inputs_and_parameters_fast_profile():
    _run_fuzz("fast", timeout=600)


@pytest.mark.slow
def test_fuzz_inputs_and_parameters_long_profile():
    _run_fuzz("long", timeout=3600)


_CRASH_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, scipy.sparse as sp, fastnmf, warnings
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(int(sys.argv[1]))
    n_ok = n_err = 0
    for case in range(int(sys.argv[2])):
        m, n = rng.integers(1, 9, size=2)
        A = sp.random(m, n, density=0.5, format="csr", random_state=rng) 
        data, indices, indptr = A.data.copy(), A.indices.copy(), A.indptr.copy()
        kind = case % 7
        if kind == 0 and indices.size:
            indices[rng.integers(indices.size)] = rng.choice([-1, n, n + 5, 2**31 - 1])
        elif kind == 1 and indptr.size > 2:
            indptr[1] = indptr[-1] + 3
        elif kind == 2:
            indptr = indptr[:-1]
        elif kind == 3 and data.size:
            data = data[:-1]
        elif kind == 4:
            indices = indices.astype(np.int64)
        elif kind == 5 and indptr.size > 2:
            indptr[-1] = indptr[-1] - 1
        elif kind == 6 and data.size:
            data[rng.integers(data.size)] = rng.choice([np.nan, -1.0, np.inf])
        try:
            B = sp.csr_matrix((m, n))
            B.data, B.indices, B.indptr = data, indices, indptr
            fastnmf.nmf(B, 1, beta_loss=[2, 1, 1.5][case % 3], max_iter=3, tol=0)
            n_ok += 1
        except (ValueError, TypeError, IndexError) as exc:
            n_err += 1
    print(n_ok, n_err)
""")


@pytest.mark.parametrize("seed", [0, 1])
def test_malformed_sparse_never_crashes_the_process(seed, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(seed), "70"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    n_ok, n_err = map(int, proc.stdout.split())
    assert n_ok + n_err == 70 and n_err > 0


def test_keyboard_interrupt_keeps_last_complete_iterate():
    X = random_problem(seed=1)
    seen = {}

    def cb(it, W, H, loss):
        if it == 4:
            seen["W"], seen["H"] = W.copy(), H.copy()
            raise KeyboardInterrupt

    est = fastnmf.NMF(4, beta_loss="kl", tol=0, max_iter=50, eval_every=2, callback=cb)
    with pytest.warns(RuntimeWarning, match="interrupted after 4 complete iterations"):
        W = est.fit_transform(X)
    assert est.n_iter_ == 4 and est.fit_info_["stop_reason"] == "interrupted"
    assert np.array_equal(W, seen["W"]) and np.array_equal(est.components_, seen["H"])
    assert np.isfinite(est.loss_history_).all()


def test_memory_estimate_refuses_up_front(monkeypatch):
    import fastnmf._memory as mem
    monkeypatch.setattr(mem, "available_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match="needs about .* GiB beyond X"):
        fastnmf.nmf(random_problem(seed=2), 3, beta_loss=1.5)
    monkeypatch.setattr(mem, "available_bytes", lambda: 10**12)
    fastnmf.nmf(random_problem(seed=2), 3, max_iter=2, tol=0)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 20), (33, 32), (5,), (0, 4)])
def test_aligned_arrays_start_a_cache_line(shape, dtype):
    from fastnmf._memory import CACHE_LINE, aligned_copy, aligned_empty
    keep = [np.empty(3) for _ in range(5)]   # vary the heap between the allocations
    for _ in range(3):
        A = aligned_empty(shape, dtype)
        keep.append(np.empty(17, dtype=np.uint8))
        assert A.shape == shape and A.dtype == dtype and A.flags.c_contiguous
        assert A.flags.writeable
        if A.size:
            assert A.ctypes.data % CACHE_LINE == 0
    src = np.random.default_rng(0).random(shape)
    B = aligned_copy(src.T if src.ndim == 2 else src, dtype)
    np.testing.assert_array_equal(B, (src.T if src.ndim == 2 else src).astype(dtype))
    assert B.flags.c_contiguous and (B.size == 0 or B.ctypes.data % CACHE_LINE == 0)


@pytest.mark.parametrize("solver,beta", [("mu", 2), ("mu", 1), ("hals", 2)])
def test_solvers_work_on_cache_line_aligned_factors(monkeypatch, solver, beta):
    """The fit hands the kernels aligned W, H^T and buffers whatever the caller passed (here a
    misaligned custom start), and returns ordinary arrays that own their memory."""
    from fastnmf import _driver
    from fastnmf._memory import CACHE_LINE
    seen = []
    run = _driver.run

    def spy(algo, **kw):
        bufs = [algo.W, algo.Ht] + [b for d in ("_num", "_den", "_P")
                                    for b in getattr(algo, d, {}).values()]
        seen.append([b.ctypes.data % CACHE_LINE for b in bufs])
        return run(algo, **kw)

    monkeypatch.setattr(_driver, "run", spy)
    X = sp.random(60, 40, density=0.2, random_state=3, format="csr") * 5
    rng = np.random.default_rng(1)
    raw = rng.random(60 * 4 + 1 + 4 * 40 + 1)
    W0 = raw[1:1 + 240].reshape(60, 4)            # 8 bytes past an aligned-or-not base
    H0 = raw[242:242 + 160].reshape(4, 40)
    W, H, _ = fastnmf.nmf(X, 4, init="custom", W=W0, H=H0, solver=solver, beta_loss=beta,
                          max_iter=5, tol=0)
    assert seen and all(a == 0 for run_seen in seen for a in run_seen)
    for F, shape in ((W, (60, 4)), (H, (4, 40))):
        assert F.shape == shape and F.flags.owndata and F.flags.c_contiguous


@pytest.mark.parametrize("shape,k", [((1, 7), 1), ((9, 1), 1), ((1, 1), 1), ((5, 4), 1),
                                     ((6, 5), 5)])
@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5])
def test_degenerate_shapes_and_ranks(shape, k, beta):
    rng = np.random.default_rng(0)
    X = rng.random(shape) + 0.1
    for fmt in (X, sp.csr_matrix(X)):
        W, H, info = fastnmf.nmf(fmt, k, beta_loss=beta, max_iter=30, tol=0)
        assert W.shape == (shape[0], k) and H.shape == (k, shape[1])
        assert np.isfinite(W).all() and np.isfinite(H).all() and np.isfinite(info["loss"])


@pytest.mark.parametrize("beta", [2.0, 1.0, 1.5])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_zero_rows_get_zero_rows_of_W(beta, fmt):
    X = random_problem(seed=3)  # row 0 and column 1 are empty
    Xf = sp.csr_matrix(X) if fmt == "csr" else X
    W, H, _ = fastnmf.nmf(Xf, 4, beta_loss=beta, max_iter=50, tol=0, init="random",
                          random_state=0)
    assert np.isfinite(W).all() and np.isfinite(H).all()
    assert np.abs(W[0]).max() <= 1e-12 * np.abs(W).max()
    assert np.abs(H[:, 1]).max() <= 1e-12 * np.abs(H).max()


@pytest.mark.parametrize("beta", [1.5, 2.0, 3.0])
def test_exact_fit_of_huge_data_reports_zero_loss_not_nan(beta):
    """X = 2^800 (1 x 1) with r = 1 is fitted exactly in the rescaled problem: the loss is 0.
    Scaled back by c^beta (which overflows to inf here) it must stay 0, not 0 * inf = NaN
    (found by the fuzzer in CI)."""
    X = np.array([[2.0**800]])
    for seed in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W, H, info = fastnmf.nmf(X, 1, beta_loss=beta, init="random", random_state=seed,
                                     max_iter=15, tol=0, eval_every=1)
        h = np.asarray(info["loss_history"])
        assert not np.isnan(h).any(), h
        assert np.isclose((W @ H)[0, 0], 2.0**800, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e-30, 1e30])
@pytest.mark.parametrize("beta", [2.0, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_extreme_scales_solve_the_same_problem(scale, beta, fmt):
    X = random_problem(seed=4)
    kw = dict(beta_loss=beta, init="random", random_state=0, max_iter=25, tol=0)
    Xs = X * scale
    W, H, info = fastnmf.nmf(sp.csr_matrix(Xs) if fmt == "csr" else Xs, 4, **kw)
    W1, H1, info1 = fastnmf.nmf(X, 4, **kw)
    assert np.isfinite(W).all() and np.isfinite(H).all() and not np.isnan(info["loss"])
    # D_beta(cX | cY) = c^beta D_beta(X | Y): the same factorization up to the scale
    np.testing.assert_allclose((W / np.sqrt(scale)) @ (H / np.sqrt(scale)), W1 @ H1,
                               rtol=1e-6, atol=1e-9 * np.abs(W1 @ H1).max())
    with np.errstate(over="ignore", under="ignore"):
        expected = np.float64(info1["loss"]) * np.float64(scale) ** beta
    if np.isfinite(expected) and expected > 1e-290:
        assert info["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_mu_monotone_on_200_random_problems(beta, fmt):
    _monotone_many("mu", beta, fmt, 200)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_hals_monotone_on_200_random_problems(fmt):
    _monotone_many("hals", 2.0, fmt, 200)


@pytest.mark.parametrize("solver,beta", [("mu", 0.0), ("mu", 1.0), ("mu", 3.0), ("hals", 2.0)])
def test_monotone_on_20_random_problems(solver, beta):
    _monotone_many(solver, beta, "csr", 20)


def _monotone_many(solver, beta, fmt, count):
    rng = np.random.default_rng(int(beta * 10) + (fmt == "csr"))
    for case in range(count):
        m, n = rng.integers(2, 40, size=2)
        k = int(rng.integers(1, min(m, n) + 1))
        X = random_problem(m=m, n=n, r=3, seed=case, density=rng.uniform(0.1, 1.0),
                           positive=beta <= 0)
        if not X.any():
            continue  # all-zero X is a documented error, tested elsewhere
        Xf = sp.csr_matrix(X) if fmt == "csr" else X
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W, H, info = fastnmf.nmf(Xf, k, beta_loss=beta, solver=solver, init="random",
                                     random_state=case, max_iter=30, tol=0, eval_every=1)
        h = np.asarray(info["loss_history"])
        assert np.isfinite(W).all() and np.isfinite(H).all(), case
        # "beyond rounding": the loss is summed from terms as large as the initial loss
        assert np.all(np.diff(h) <= 1e-9 * h[:-1] + 1e-11 * h[0]), (case, np.diff(h).max())
