"""Kernel-level correctness: every Numba kernel, every data-operator method and one step of
each solver against the independent NumPy references in tests/reference.py.

Axes: float32 / float64, dense / CSR, int32 / int64 CSR index arrays, 1 / 2 Numba threads,
empty rows and columns, explicit stored zeros, factor rows below the WH guard, unsorted and
duplicate CSR indices (through fastnmf._validation.check_X). Also: CSR results are bitwise
identical for 1 and 2 threads, and float32 stays float32 end to end.
"""
import contextlib

import numba
import numpy as np
import pytest
import scipy.sparse as sp

try:  # tests/ as a package or as a plain rootdir-inserted folder
    from . import reference as ref
except ImportError:
    import reference as ref

from fastnmf._data import CsrOperator, DenseOperator, make_operator, wh_guard
from fastnmf._kernels import _fixed_rank
from fastnmf._kernels import dense as kd
from fastnmf._kernels import factor as kf
from fastnmf._kernels import sparse as ks
from fastnmf._validation import check_X
from fastnmf.solvers import HALS, MU
from fastnmf.solvers._base import Penalty

M, N, R = 30, 20, 4
EMPTY_ROWS = (0, 13, M - 1)          # first, middle and last row: every thread chunk sees one
EMPTY_COLS = (0, 7, N - 1)

DTYPES = [np.float32, np.float64]
IDX_DTYPES = [np.int32, np.int64]
THREADS = [1, 2]
FORMATS = ["dense", "csr-int32", "csr-int64"]

RTOL = {np.float32: 3e-5, np.float64: 1e-10}        # products, elementwise terms
RTOL_LOSS = {np.float32: 1e-4, np.float64: 1e-9}    # float64 losses from float32/64 factors
RTOL_STEP = {np.float32: 1e-3, np.float64: 1e-9}    # a whole solver iteration (float32: an
# active-set flip near zero amplifies rounding over repeated sweeps)


# ------------------------------------------------------------------------------------------
# helpers

@contextlib.contextmanager
def numba_threads(k):
    """Run the block with ``k`` Numba threads, restoring the previous count afterwards."""
    if k > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"needs {k} Numba threads, NUMBA_NUM_THREADS="
                    f"{numba.config.NUMBA_NUM_THREADS}")
    old = numba.get_num_threads()
    numba.set_num_threads(k)
    try:
        yield
    finally:
        numba.set_num_threads(old)


@pytest.fixture(params=THREADS, ids=lambda k: f"{k}thr")
def threads(request):
    """The whole test body runs with this many Numba threads."""
    with numba_threads(request.param):
        yield request.param


def assert_close(actual, expected, rtol, what=""):
    """|actual - expected| <= rtol * (largest |expected| of the same row); rows of the last
    axis, so a row made huge by the WH guard does not hide errors in the others. A row whose
    expected values are all (near) zero is held to rtol * (rtol x the largest |expected|)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    a = actual.astype(np.float64)
    assert np.isfinite(a).all(), f"{what}: non-finite values {a[~np.isfinite(a)][:5]}"
    if expected.ndim >= 2:
        scale = np.abs(expected).max(axis=-1, keepdims=True)
        scale = np.maximum(scale, rtol * scale.max(initial=0.0))
    else:
        scale = np.abs(expected).max() if expected.size else 0.0
    err = np.abs(a - expected)
    bad = err > rtol * scale
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        worst = float((err / np.where(scale > 0, scale, 1.0)).max())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} entries differ; first at {idx}: "
            f"got {a[idx]!r}, expected {expected[idx]!r}; worst scaled error {worst:.3g} "
            f"(rtol {rtol:g})")


def assert_scalar_close(actual, expected, rtol, what=""):
    assert isinstance(actual, float), f"{what}: returned {type(actual)}, not a Python float"
    assert np.isfinite(actual), f"{what}: {actual}"
    assert abs(actual - expected) <= rtol * abs(expected), (
        f"{what}: got {actual!r}, expected {expected!r}, rel err "
        f"{abs(actual - expected) / abs(expected):.3g} (rtol {rtol:g})")


def make_X(dtype, positive=False, seed=0, m=M, n=N):
    """Non-negative m x n data near a rank-R model. Unless ``positive``: ~60% zeros, empty
    rows EMPTY_ROWS and empty columns EMPTY_COLS."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (m, R)) @ rng.gamma(1.0, 1.0, (R, n))
    X *= rng.uniform(0.5, 1.5, (m, n))
    if not positive:
        X[rng.random((m, n)) > 0.4] = 0.0
        X[list(EMPTY_ROWS)] = 0.0
        X[:, list(EMPTY_COLS)] = 0.0
    return np.ascontiguousarray(X, dtype=dtype)


def make_csr(X, idx_dtype, explicit_zeros=0):
    """Canonical CSR of dense X with index arrays of ``idx_dtype``; with ``explicit_zeros``,
    that many stored entries are set to 0 (stored zeros, still canonical)."""
    A = sp.csr_matrix(X)
    if explicit_zeros:
        A.data[:: max(1, A.nnz // explicit_zeros)][:explicit_zeros] = 0
    A.indices = A.indices.astype(idx_dtype)
    A.indptr = A.indptr.astype(idx_dtype)
    assert A.has_canonical_format
    return A


def csr_transpose(A, idx_dtype):
    """CSR of A.T (sorted) with index arrays of ``idx_dtype``, built with SciPy."""
    T = sp.csr_matrix(A.T)
    T.sort_indices()
    T.indices = T.indices.astype(idx_dtype)
    T.indptr = T.indptr.astype(idx_dtype)
    return T


def make_factor(rows, dtype, seed, guard_rows=False):
    """A rows x R factor with entries in [0.2, 1.2]; with ``guard_rows``, row 5 is zero and
    row 6 is 1e-6 x its values, so F G^T falls below any guard used here."""
    rng = np.random.default_rng(seed)
    F = rng.uniform(0.2, 1.2, (rows, R))
    if guard_rows:
        F[5] = 0.0
        F[6] *= 1e-6
    return np.ascontiguousarray(F, dtype=dtype)


def kernel_eps(dtype):
    """The guard used in kernel-level tests: large enough that the guarded rows of
    make_factor(..., guard_rows=True) really hit it."""
    return np.dtype(dtype).type(1e-3)


def check_X_for(X, fmt, beta):
    """X (dense ndarray) in format ``fmt`` after check_X; returns the validated matrix."""
    if fmt == "dense":
        Xin = X
    else:
        Xin = make_csr(X, np.int32 if fmt == "csr-int32" else np.int64,
                       explicit_zeros=0 if beta <= 0 else 2)
    Xv = check_X(Xin, beta)
    if fmt != "dense":
        assert sp.issparse(Xv) and Xv.format == "csr"
        want = np.int32 if fmt == "csr-int32" else np.int64
        assert Xv.indices.dtype == want and Xv.indptr.dtype == want, (
            "check_X changed the index dtype, so this case would not test it")
    return Xin, Xv


# ------------------------------------------------------------------------------------------
# reference sanity: the references agree with closed forms (so a shared mistake is unlikely)

def test_reference_beta_divergence_special_cases():
    rng = np.random.default_rng(1)
    X = rng.uniform(0.1, 2.0, (5, 4))
    Y = rng.uniform(0.1, 2.0, (5, 4))
    # the general formula tends to the named losses
    for beta, near in ((2, 2.0 + 1e-7), (1, 1.0 + 1e-7), (0, 1e-7)):
        assert np.isclose(ref.beta_divergence(X, Y, beta), ref.beta_divergence(X, Y, near),
                          rtol=1e-5)
    assert np.isclose(ref.beta_divergence(X, Y, 2), 0.5 * ((X - Y) ** 2).sum())
    # 0 log 0 = 0 and x = 0 gives y^b / b for b > 0
    X0 = X.copy()
    X0[0, 0] = 0.0
    assert np.isclose(ref.beta_divergence_entries(X0, Y, 1)[0, 0], Y[0, 0])
    assert np.isclose(ref.beta_divergence_entries(X0, Y, 1.5)[0, 0], Y[0, 0] ** 1.5 / 1.5)
    assert ref.beta_divergence(X, X, 0.5) == pytest.approx(0.0, abs=1e-12)


def test_reference_hals_sweep_solves_nnls():
    """Many reference sweeps converge to the KKT point of the per-row NNLS."""
    rng = np.random.default_rng(2)
    G = rng.uniform(0.1, 1.0, (12, R))
    Q = G.T @ G + 0.1 * np.eye(R)
    P = rng.uniform(-1.0, 3.0, (6, R))
    F = ref.hals_sweeps(np.ones((6, R)), P, Q, 0.2, 2000, 0.0)
    grad = F @ Q - (P - 0.2)
    assert (F >= 0).all()
    assert np.allclose(grad[F > 0], 0.0, atol=1e-8)
    assert (grad[F == 0] >= -1e-8).all()


# ------------------------------------------------------------------------------------------
# sparse kernels

@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_times_dense(dtype, idx_dtype, threads):
    X = make_X(dtype)
    A = make_csr(X, idx_dtype, explicit_zeros=2)
    AT = csr_transpose(A, idx_dtype)
    W = make_factor(M, dtype, 10)
    Ht = make_factor(N, dtype, 11)
    for mat, B, what in ((A, Ht, "X @ Ht"), (AT, W, "X.T @ W")):
        out = np.full((mat.shape[0], R), np.nan, dtype=dtype)   # must be overwritten
        ks.csr_times_dense(mat.indptr, mat.indices, mat.data, B, out)
        assert out.dtype == dtype
        assert_close(out, ref.product(mat, B), RTOL[dtype], what)
    # empty rows of X give exactly zero rows, empty columns exactly zero rows of X.T @ W
    out = np.full((M, R), np.nan, dtype=dtype)
    ks.csr_times_dense(A.indptr, A.indices, A.data, Ht, out)
    assert (out[list(EMPTY_ROWS)] == 0).all()


@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_kl_numerator(dtype, idx_dtype, threads):
    X = make_X(dtype)
    A = make_csr(X, idx_dtype, explicit_zeros=2)
    AT = csr_transpose(A, idx_dtype)
    W = make_factor(M, dtype, 10, guard_rows=True)
    Ht = make_factor(N, dtype, 11, guard_rows=True)
    eps = kernel_eps(dtype)
    for mat, F, G, what in ((A, W, Ht, "side W"), (AT, Ht, W, "side H")):
        out = np.full(F.shape, np.nan, dtype=dtype)
        ks.csr_kl_numerator(mat.indptr, mat.indices, mat.data, F, G, eps, out)
        assert_close(out, ref.kl_numerator(mat, F, G, float(eps)), RTOL[dtype], what)


@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_kl_loss_rows(dtype, idx_dtype, threads):
    """rows[i] = sum over stored j of x log(x / wh_g) - x, i.e. the row's KL divergence
    minus sum_j wh_g (wh_g = max(wh, eps)), the part the caller adds from column sums."""
    X = make_X(dtype)
    A = make_csr(X, idx_dtype, explicit_zeros=2)
    W = make_factor(M, dtype, 10, guard_rows=True)
    Ht = make_factor(N, dtype, 11, guard_rows=True)
    eps = kernel_eps(dtype)
    rows = np.full(M, np.nan)
    ks.csr_kl_loss_rows(A.indptr, A.indices, A.data, W, Ht, eps, rows)
    Y = ref.guarded_model(W, Ht, float(eps))
    expected = ref.beta_divergence_rows(A, Y, 1) - Y.sum(axis=1)
    assert rows.dtype == np.float64
    assert_close(rows, expected, RTOL_LOSS[dtype], "KL loss rows")
    assert (rows[list(EMPTY_ROWS)] == 0).all()


@pytest.mark.parametrize("kernel", ["csr_kl_loss_rows", "csr_kl_loss_rows_loop"])
@pytest.mark.parametrize("r", [3, 20])
@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_kl_loss_rows_every_position_of_the_four_way_loop(dtype, idx_dtype, r, kernel,
                                                               threads):
    """Row i holds i nonzeros (0..11), so rows end in every remainder of the four-at-a-time
    loop; stored zeros and entries whose WH falls below the guard sit at every position mod 4
    (columns 1 and 6 are stored zeros, H^T rows 2 and 9 are 0 so WH = 0 < eps there)."""
    m, n = 12, 14
    rng = np.random.default_rng(5)
    X = np.zeros((m, n))
    for i in range(m):
        X[i, np.sort(rng.choice(n, size=i, replace=False))] = rng.integers(1, 9, size=i)
    A = sp.csr_matrix(X)
    for i in range(m):   # stored zeros: keep the entry in the structure, value 0
        for p in range(A.indptr[i], A.indptr[i + 1]):
            if A.indices[p] in (1, 6):
                A.data[p] = 0.0
    A = sp.csr_matrix((A.data.astype(dtype), A.indices.astype(idx_dtype),
                       A.indptr.astype(idx_dtype)), shape=(m, n))
    W = np.ascontiguousarray(rng.uniform(0.2, 1.2, (m, r)), dtype=dtype)
    Ht = rng.uniform(0.2, 1.2, (n, r))
    Ht[[2, 9]] = 0.0
    Ht = np.ascontiguousarray(Ht, dtype=dtype)
    eps = kernel_eps(dtype)
    rows = np.full(m, np.nan)
    getattr(ks, kernel)(A.indptr, A.indices, A.data, W, Ht, eps, rows)
    Y = ref.guarded_model(W, Ht, float(eps))
    expected = ref.beta_divergence_rows(A, Y, 1) - Y.sum(axis=1)
    assert_close(rows, expected, RTOL_LOSS[dtype], "KL loss rows, all remainders")
    assert rows[0] == 0


def test_csr_kl_loss_rows_values_outside_the_vector_log():
    """A group of four nonzeros whose ratio x / wh is subnormal (tiny x) or that meets a NaN
    in the factors takes the scalar log: the same terms as the reference, NaN where the
    factor row is NaN (not hidden)."""
    x = np.array([[1e-310, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    A = sp.csr_matrix(x)
    W = np.full((2, 6), 0.5)
    Ht = np.full((5, 6), 0.5)
    rows = np.full(2, np.nan)
    ks.csr_kl_loss_rows(A.indptr, A.indices, A.data, W, Ht, kernel_eps(np.float64), rows)
    wh = 1.5
    expected = (x * np.log(x / wh) - x).sum(axis=1)
    assert_close(rows, expected, 1e-14, "subnormal ratio")
    W[1, 2] = np.nan
    ks.csr_kl_loss_rows(A.indptr, A.indices, A.data, W, Ht, kernel_eps(np.float64), rows)
    assert np.isfinite(rows[0]) and np.isnan(rows[1])


@pytest.mark.parametrize("r", [3, 20])
@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_times_dense_every_row_length(dtype, idx_dtype, r, threads):
    """Row i holds i nonzeros (0..11): rows shorter than the first group of four (zeroed, not
    assigned), exactly one group, groups plus every remainder. The output starts as NaN, so
    a row the kernel forgot to write (or zeroed after adding) shows; and X = 0 with no
    stored entries at all."""
    m, n = 12, 14
    rng = np.random.default_rng(11)
    X = np.zeros((m, n))
    for i in range(m):
        X[i, np.sort(rng.choice(n, size=i, replace=False))] = rng.integers(1, 9, size=i)
    B = np.ascontiguousarray(rng.uniform(0.2, 1.2, (n, r)), dtype=dtype)
    for dense in (X, np.zeros((m, n))):
        A = sp.csr_matrix(dense)
        A = sp.csr_matrix((A.data.astype(dtype), A.indices.astype(idx_dtype),
                           A.indptr.astype(idx_dtype)), shape=(m, n))
        out = np.full((m, r), np.nan, dtype=dtype)
        ks.csr_times_dense(A.indptr, A.indices, A.data, B, out)
        assert_close(out, dense @ B.astype(np.float64), RTOL[dtype], "X @ B, all row lengths")
        assert np.all(out[0] == 0)


# every way a row is cut into pieces (float64: 4, 2, 1 lanes; float32: 8, 4, 1) and both
# sides of the 512-byte limit (float64 64 / 65, float32 128 / 129)
FIXED_RANKS = [1, 2, 3, 5, 6, 7, 12, 13, 15, 20, 64, 65, 128, 129]
# each rank is a compile: one index type per dtype (the other kernels' tests take both)
FIXED_CASES = [(np.float64, np.int32), (np.float32, np.int64)]


@pytest.mark.parametrize("dtype,idx_dtype", FIXED_CASES, ids=lambda d: np.dtype(d).name)
def test_csr_times_dense_every_rank(dtype, idx_dtype):
    """Every way a row is cut into 32-byte and 16-byte vectors and single elements, both
    sides of the 512-byte limit of the fixed-rank kernel, which kernel the rule picks, and
    the result against SciPy. The output starts as NaN."""
    rng = np.random.default_rng(3)
    A = sp.random(40, 30, density=0.2, format="csr", random_state=rng, dtype=np.float64)
    A.data = rng.integers(1, 9, size=A.nnz).astype(np.float64)
    A = sp.csr_matrix((A.data.astype(dtype), A.indices.astype(idx_dtype),
                       A.indptr.astype(idx_dtype)), shape=A.shape)
    size = np.dtype(dtype).itemsize
    for r in FIXED_RANKS:
        B = np.ascontiguousarray(rng.uniform(0.2, 1.2, (30, r)), dtype=dtype)
        out = np.full((40, r), np.nan, dtype=dtype)
        before = len(ks.csr_times_dense_fixed.signatures)
        ks.csr_times_dense(A.indptr, A.indices, A.data, B, out)
        assert_close(out, A.astype(np.float64) @ B.astype(np.float64), RTOL[dtype], f"r = {r}")
        assert _fixed_rank.fits(r, size) == (r * size <= 512)
        if not _fixed_rank.fits(r, size):
            assert len(ks.csr_times_dense_fixed.signatures) == before


def kl_rank_cases(dtype, idx_dtype, seed):
    """(r, A, F, G) for every rank of ``FIXED_RANKS``: a 40 x 30 CSR count matrix with stored
    zeros, F (40 x r) and G (30 x r) with two all-zero rows (WH = 0 < eps there)."""
    rng = np.random.default_rng(seed)
    A = sp.random(40, 30, density=0.2, format="csr", random_state=rng, dtype=np.float64)
    A.data = rng.integers(0, 9, size=A.nnz).astype(np.float64)   # some stored zeros
    A = sp.csr_matrix((A.data.astype(dtype), A.indices.astype(idx_dtype),
                       A.indptr.astype(idx_dtype)), shape=A.shape)
    for r in FIXED_RANKS:
        F = np.ascontiguousarray(rng.uniform(0.2, 1.2, (40, r)), dtype=dtype)
        G = rng.uniform(0.2, 1.2, (30, r))
        G[[3, 17]] = 0.0
        yield r, A, F, np.ascontiguousarray(G, dtype=dtype)


@pytest.mark.parametrize("dtype,idx_dtype", FIXED_CASES, ids=lambda d: np.dtype(d).name)
def test_csr_kl_numerator_every_rank(dtype, idx_dtype):
    """The KL numerator at every rank of ``FIXED_RANKS`` (both kernels, by the rule) against
    the NumPy reference, with stored zeros and gathered rows of zeros (WH = 0 < eps, so the
    guard must apply); the output starts as NaN."""
    eps = kernel_eps(dtype)
    for r, A, F, G in kl_rank_cases(dtype, idx_dtype, seed=8):
        out = np.full((40, r), np.nan, dtype=dtype)
        ks.csr_kl_numerator(A.indptr, A.indices, A.data, F, G, eps, out)
        assert_close(out, ref.kl_numerator(A, F, G, float(eps)), RTOL[dtype], f"r = {r}")


@pytest.mark.parametrize("dtype,idx_dtype", FIXED_CASES, ids=lambda d: np.dtype(d).name)
def test_csr_kl_loss_rows_every_rank(dtype, idx_dtype):
    """The KL loss rows at every rank of ``FIXED_RANKS`` (both kernels, by the rule) against
    the reference, with stored zeros and gathered rows of zeros (the guard applies)."""
    eps = kernel_eps(dtype)
    for r, A, F, G in kl_rank_cases(dtype, idx_dtype, seed=9):
        rows = np.full(40, np.nan)
        ks.csr_kl_loss_rows(A.indptr, A.indices, A.data, F, G, eps, rows)
        Y = ref.guarded_model(F, G, float(eps))
        expected = ref.beta_divergence_rows(A, Y, 1) - Y.sum(axis=1)
        assert_close(rows, expected, RTOL_LOSS[dtype], f"r = {r}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mu_apply_gram_every_rank(dtype, threads):
    """The Frobenius step at every rank up to and past the fixed-rank limit (the per-row
    denominator below it, the blocked GEMM above; gamma != 1 always the blocks) against the
    reference step with den from NumPy; zero rows, zero entries and a NaN in num."""
    T = np.dtype(dtype).type
    rng = np.random.default_rng(12)
    limit = _fixed_rank.MU_ROW_MAX_RANK[np.dtype(dtype).itemsize]
    for r in list(range(1, 14)) + [limit - 1, limit, limit + 1, 32]:
        for gamma in (1.0, 0.5):
            F = rng.uniform(0.1, 2.0, (130, r)).astype(dtype)
            G = rng.uniform(0.0, 1.0, (9, r))
            gram = np.ascontiguousarray(G.T @ G, dtype=dtype)
            num = rng.uniform(0.0, 5.0, (130, r)).astype(dtype)
            F[0, :] = 0
            F[-1, r - 1] = 0
            num[5, 0] = np.nan
            tiny = T(1e-6)
            den = F.astype(np.float64) @ gram.astype(np.float64)
            expected = ref.mu_factor_step(F, num, den, 0.7, 1.3, gamma, float(tiny))
            before = len(kf.mu_apply_gram_fixed.signatures)
            kf.mu_apply_gram(F, num, gram, T(0.7), T(1.3), T(gamma), tiny)
            ok = ~np.isnan(expected)
            assert np.array_equal(np.isnan(F), ~ok), (r, gamma)
            assert_close(np.where(ok, F, 0), np.where(ok, expected, 0), RTOL[dtype],
                         f"r = {r}, gamma = {gamma}")
            assert F[-1, r - 1] == 0
            if gamma != 1 or r > limit:
                assert len(kf.mu_apply_gram_fixed.signatures) == before


def test_fixed_rank_row_pieces():
    """32-byte vectors first, then one 16-byte vector, then single elements; they tile the
    row exactly."""
    assert _fixed_rank.row_pieces(20, 8) == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4)]
    assert _fixed_rank.row_pieces(11, 8) == [(0, 4), (4, 4), (8, 2), (10, 1)]
    assert _fixed_rank.row_pieces(20, 4) == [(0, 8), (8, 8), (16, 4)]
    assert _fixed_rank.row_pieces(7, 4) == [(0, 4), (4, 1), (5, 1), (6, 1)]
    for size in (4, 8):
        for r in range(1, 70):
            pieces = _fixed_rank.row_pieces(r, size)
            assert [k for k, _ in pieces] == list(np.cumsum([0] + [w for _, w in pieces])[:-1])
            assert sum(w for _, w in pieces) == r


def test_csr_times_dense_float32_data_float64_factor():
    """The float32 fits form their loss cross term from float32 X and float64 factors: the
    fixed-rank kernel widens each value, never the other way."""
    rng = np.random.default_rng(4)
    A = sp.random(50, 40, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    B = rng.uniform(0.2, 1.2, (40, 20))
    out = np.full((50, 20), np.nan)
    ks.csr_times_dense(A.indptr, A.indices, A.data, B, out)
    assert_close(out, A.astype(np.float64) @ B, 1e-13, "float32 X @ float64 B")


def test_csr_times_dense_any_layout():
    """A factor or output that is not C-contiguous goes to the loop kernel, same result."""
    rng = np.random.default_rng(6)
    A = sp.random(50, 40, density=0.2, format="csr", random_state=rng)
    B = np.asfortranarray(rng.uniform(0.2, 1.2, (40, 20)))
    out = np.full((50, 24), np.nan)[:, :20]
    ks.csr_times_dense(A.indptr, A.indices, A.data, B, out)
    assert_close(out, A @ B, 1e-13, "X @ B, Fortran B, strided out")


def test_rank_kernel_compiles_each_rank_once():
    """A call goes to the entry point compiled for its argument types and rank: a second
    call with the same ones compiles nothing; a new rank compiles one more signature, whose
    last type is that rank as a literal."""
    A = sp.random(20, 10, density=0.3, format="csr", random_state=1)
    kern = ks.csr_times_dense_fixed
    for r in (7, 7, 9):
        B = np.ones((10, r))
        kern(A.indptr, A.indices, A.data, B, np.empty((20, r)), False)
    types = tuple(numba.typeof(a) for a in (A.indptr, A.indices, A.data, B, B)) + (
        numba.types.literal(False),)
    literals = [s[-1].literal_value for s in kern.signatures if tuple(s[:-1]) == types]
    assert sorted(set(literals)) == sorted(literals) and {7, 9} <= set(literals)
    # cached on disk like every kernel (one compile per rank per machine, not per process)
    assert type(kern.dispatcher._cache).__name__ == "FunctionCache"


def placed(F, offset):
    """A C-contiguous copy of F whose first element sits ``offset`` bytes after a cache line."""
    raw = np.empty(F.nbytes + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start:start + F.nbytes].view(F.dtype).reshape(F.shape)
    out[...] = F
    return out


@pytest.mark.parametrize("r", [R, 20, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_kernels_do_not_depend_on_where_the_factors_start(dtype, r):
    """The fit places its factors on cache lines; the CSR kernels must give bitwise the same
    results wherever a factor starts (no alignment-dependent vectorization of a reduction)."""
    X = make_X(dtype)
    A = make_csr(X, np.int32, explicit_zeros=2)
    AT = csr_transpose(A, np.int32)
    rng = np.random.default_rng(7)
    W = np.ascontiguousarray(rng.uniform(0.2, 1.2, (M, r)), dtype=dtype)
    Ht = np.ascontiguousarray(rng.uniform(0.2, 1.2, (N, r)), dtype=dtype)
    eps = kernel_eps(dtype)
    results = []
    for offset in range(0, 64, np.dtype(dtype).itemsize):
        Wp, Hp = placed(W, offset), placed(Ht, offset)
        assert Wp.ctypes.data % 64 == offset
        got = [np.empty((M, r), dtype), np.empty((N, r), dtype), np.empty((M, r), dtype),
               np.empty((N, r), dtype), np.empty(M)]
        ks.csr_times_dense(A.indptr, A.indices, A.data, Hp, got[0])
        ks.csr_times_dense(AT.indptr, AT.indices, AT.data, Wp, got[1])
        ks.csr_kl_numerator(A.indptr, A.indices, A.data, Wp, Hp, eps, got[2])
        ks.csr_kl_numerator(AT.indptr, AT.indices, AT.data, Hp, Wp, eps, got[3])
        ks.csr_kl_loss_rows(A.indptr, A.indices, A.data, Wp, Hp, eps, got[4])
        results.append(got)
    assert_close(results[0][0], ref.product(A, Ht), RTOL[dtype], "X @ Ht")   # and right
    for got in results[1:]:
        for a, b in zip(results[0], got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_prefetch_row_address_is_the_rows_address(dtype):
    """The CSR kernels hint lines from ``_row_address``; it must be where NumPy has the row
    (any row, any placement of the array, a row-slice view)."""
    from fastnmf._kernels._prefetch import _row_address

    @numba.njit
    def address(B, j):
        return _row_address(B, j)

    B = np.zeros((40, 20), dtype)
    for offset in (0, np.dtype(dtype).itemsize, 24):
        Bp = placed(B, offset)
        for A in (Bp, Bp[7:]):
            for j in (0, 1, 5, A.shape[0] - 1):
                assert address(A, j) == A[j].ctypes.data
                assert address(A, np.uint64(j)) == A[j].ctypes.data


def test_prefetch_last_byte_hint_exactly_when_a_row_can_spill():
    """``spills`` (whether a row can reach one line past the hints 64 bytes apart from its
    start) against counting the lines of every row start, for aligned and shifted arrays."""
    from fastnmf._kernels._prefetch import U, spills

    @numba.njit
    def can_spill(B):
        return spills(B, U(B.shape[1]) * U(B.itemsize))

    for dtype in DTYPES:
        size = np.dtype(dtype).itemsize
        for r in list(range(1, 41)) + [50, 64, 100]:
            span = r * size
            for offset in range(0, 64, size):
                B = placed(np.zeros((70, r), dtype), offset)
                starts = [(offset + j * span) % 64 for j in range(70)]
                lines = -(-span // 64)
                expected = any((s + span - 1) // 64 >= lines for s in starts)
                assert can_spill(B) == expected, (np.dtype(dtype).name, r, offset)


@pytest.mark.parametrize("copy", ["interleaved", "single", "narrow"])
@pytest.mark.parametrize("r", [1, 3, 4, 5, 8, 12, 17, 20, 33])
@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_row_kernels_every_vector_remainder(dtype, idx_dtype, r, copy):
    """The row kernels' inner loops run over r elements: vectors of 2-8 lanes, one or two
    per iteration, and a remainder; these ranks hit a row shorter than a vector, exact
    multiples, and every kind of remainder, for the CSR products, the KL numerator and
    loss, and the HALS sweeps, in all three compiled copies of each (whichever the rank
    would pick)."""
    kern = {name: getattr(mod, name).__dict__[copy] for mod, name in (
        (ks, "csr_times_dense_loop"), (ks, "csr_kl_numerator_loop"), (ks, "csr_kl_loss_rows_loop"),
        (kf, "hals_sweeps_loop"))}
    rng = np.random.default_rng(r)
    X = make_X(dtype)
    A = make_csr(X, idx_dtype, explicit_zeros=2)
    AT = csr_transpose(A, idx_dtype)
    W = np.ascontiguousarray(rng.uniform(0.2, 1.2, (M, r)), dtype=dtype)
    Ht = np.ascontiguousarray(rng.uniform(0.2, 1.2, (N, r)), dtype=dtype)
    eps = kernel_eps(dtype)
    for mat, F, G, what in ((A, W, Ht, "side W"), (AT, Ht, W, "side H")):
        out = np.full(F.shape, np.nan, dtype=dtype)
        kern["csr_times_dense_loop"](mat.indptr, mat.indices, mat.data, G, out)
        assert_close(out, ref.product(mat, G), RTOL[dtype], f"product {what} r={r}")
        out = np.full(F.shape, np.nan, dtype=dtype)
        kern["csr_kl_numerator_loop"](mat.indptr, mat.indices, mat.data, F, G, eps, out)
        assert_close(out, ref.kl_numerator(mat, F, G, float(eps)), RTOL[dtype],
                     f"KL numerator {what} r={r}")
    rows = np.full(M, np.nan)
    kern["csr_kl_loss_rows_loop"](A.indptr, A.indices, A.data, W, Ht, eps, rows)
    Y = ref.guarded_model(W, Ht, float(eps))
    assert_close(rows, ref.beta_divergence_rows(A, Y, 1) - Y.sum(axis=1), RTOL_LOSS[dtype],
                 f"KL loss rows r={r}")
    Xp = make_X(dtype, positive=True).astype(np.float64)   # no all-zero row of P to clip
    P = (Xp @ Ht.astype(np.float64)).astype(dtype)
    Q = (Ht.T.astype(np.float64) @ Ht.astype(np.float64)).astype(dtype)
    expected = ref.hals_sweeps(W, P, Q, 0.0, 1, 0.0)
    kern["hals_sweeps_loop"](W, P, Q, dtype(0), 1, dtype(0))
    assert_close(W, expected, RTOL[dtype], f"one HALS sweep r={r}")


@pytest.mark.parametrize("tiles", [(3, 7), (32, 1024)], ids=["small-tiles", "whole-rows"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.7, 1.0, 1.3, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_beta_tiles(dtype, idx_dtype, beta, tiles, threads):
    """Terms and loss rows against the dense NumPy reference, with tiles that cut rows and
    columns at odd places (a part block and a part tile at the ends) and with one tile of
    whole rows."""
    T = np.dtype(dtype).type
    X = make_X(dtype, positive=beta <= 0)
    A = make_csr(X, idx_dtype, explicit_zeros=0 if beta <= 0 else 2)
    AT = csr_transpose(A, idx_dtype)
    W = make_factor(M, dtype, 10, guard_rows=True)
    Ht = make_factor(N, dtype, 11, guard_rows=True)
    eps = kernel_eps(dtype)
    for mat, F, G, what in ((A, W, Ht, "side W"), (AT, Ht, W, "side H")):
        rows_n = mat.shape[0]
        sentinel = T(-7.0)
        for want_terms, want_loss in ((True, False), (False, True), (True, True)):
            num = np.full(F.shape, sentinel, dtype=dtype)
            den = np.full(F.shape, sentinel, dtype=dtype)
            loss_rows = np.full(rows_n, -7.0)
            ks.csr_beta_tiles(mat.indptr, mat.indices, mat.data, F, G, T(beta), eps,
                              num, den, loss_rows, want_terms, want_loss, *tiles)
            tag = f"{what} beta={beta} terms={want_terms} loss={want_loss}"
            if want_terms:
                assert_close(num, ref.beta_numerator(mat, F, G, beta, float(eps)),
                             RTOL[dtype], "num " + tag)
                assert_close(den, ref.beta_denominator(F, G, beta, float(eps)),
                             RTOL[dtype], "den " + tag)
            else:
                assert (num == sentinel).all() and (den == sentinel).all(), tag
            if want_loss:
                Y = ref.guarded_model(F, G, float(eps))
                assert_close(loss_rows, ref.beta_divergence_rows(mat, Y, beta),
                             RTOL_LOSS[dtype], "loss rows " + tag)
            else:
                assert (loss_rows == -7.0).all(), tag


# ------------------------------------------------------------------------------------------
# dense row-block kernels

@pytest.mark.parametrize("kernel", ["dense_times", "dense_times_gt"])
@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_times(dtype, block, kernel, threads):
    X = make_X(dtype)
    G = make_factor(N, dtype, 11)
    out = np.full((M, G.shape[1]), np.nan, dtype=dtype)
    getattr(kd, kernel)(X, G, out, block)
    assert out.dtype == dtype
    assert_close(out, ref.product(X, G), RTOL[dtype], f"X @ G block={block}")


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_times_transposed(dtype, block, threads):
    """X^T F from X by row blocks (partials summed in block order), for any block count;
    partial and out start as NaN, so every entry must be written."""
    X = make_X(dtype)
    F = make_factor(M, dtype, 12)
    nb = -(-M // block)
    partial = np.full((nb, R, N), np.nan, dtype=dtype)
    out = np.full((N, R), np.nan, dtype=dtype)
    kd.dense_times_transposed(X, F, partial, out, block)
    assert out.dtype == dtype
    assert_close(out, ref.product(X.T, F), RTOL[dtype], f"X^T @ F block={block}")


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_mu_frobenius_w(dtype, block, threads):
    """The one-pass step against NumPy: W <- W * (X Ht) / max(W (Ht^T Ht) + l1 + l2 W, tiny)
    (gamma 1), then X^T W with the new W; partial and out start as NaN."""
    X = make_X(dtype)
    W = make_factor(M, dtype, 12)
    Ht = make_factor(N, dtype, 13)
    T = np.dtype(dtype).type
    l1, l2, tiny = T(0.5), T(0.25), T(np.sqrt(np.finfo(dtype).tiny))
    gram = np.ascontiguousarray(Ht.T @ Ht)
    X64, W64, H64 = (a.astype(np.float64) for a in (X, W, Ht))
    W_ref = W64 * (X64 @ H64) / np.maximum(W64 @ (H64.T @ H64) + 0.5 + 0.25 * W64, float(tiny))
    partial = np.full((-(-M // block), R, N), np.nan, dtype=dtype)
    out = np.full((N, R), np.nan, dtype=dtype)
    Wk = W.copy()
    kd.dense_mu_frobenius_w(X, Wk, Ht, gram, l1, l2, T(1), tiny, partial, out, block)
    assert Wk.dtype == dtype and out.dtype == dtype
    assert_close(Wk, W_ref, RTOL_STEP[dtype], f"W block={block}")
    assert_close(out, X64.T @ Wk.astype(np.float64), RTOL[dtype], f"X^T W block={block}")


@pytest.mark.parametrize("beta", [1.0, 1.5, 0.5, 1.3, 0.7])
@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_mu_beta_w(dtype, block, beta, threads):
    """The one-pass beta step against NumPy: W <- W * (num / max(den + l1 + l2 W, tiny))^gamma
    with the W-side terms, then the H-side terms with the new W (num_h always, den_h except
    for beta = 1, which the caller fills); partials and outputs start as NaN."""
    X = make_X(dtype)
    W = make_factor(M, dtype, 12)
    Ht = make_factor(N, dtype, 13)
    T = np.dtype(dtype).type
    eps = kernel_eps(dtype)
    l1, l2, tiny = T(0.5), T(0.25), T(np.sqrt(np.finfo(dtype).tiny))
    gamma = T(ref.mu_exponent(beta))
    num, den = ref.mu_side_terms(X, W, Ht, beta, float(eps))
    if beta == 1:
        den = np.broadcast_to(Ht.astype(np.float64).sum(axis=0), num.shape)
    W_ref = ref.mu_factor_step(W, num, den, 0.5, 0.25, float(gamma), float(tiny))
    nb = -(-M // block)
    pn, pd = (np.full((nb, R, N), np.nan, dtype=dtype) for _ in range(2))
    num_h, den_h = (np.full((N, R), np.nan, dtype=dtype) for _ in range(2))
    Wk = W.copy()
    kd.dense_mu_beta_w(X, Wk, Ht, T(beta), eps, l1, l2, gamma, tiny, pn, pd, num_h, den_h,
                       block)
    assert Wk.dtype == dtype and num_h.dtype == dtype
    assert_close(Wk, W_ref, RTOL_STEP[dtype], f"W block={block} beta={beta}")
    assert_close(num_h, ref.beta_numerator(X.T, Ht, Wk, beta, float(eps)), RTOL_STEP[dtype],
                 f"num_h block={block} beta={beta}")
    if beta != 1:
        assert_close(den_h, ref.beta_denominator(Ht, Wk, beta, float(eps)), RTOL_STEP[dtype],
                     f"den_h block={block} beta={beta}")


def test_sum_partials_adds_in_block_order():
    """out = sum of the partials, with the sum of the first nb only, and transposed."""
    rng = np.random.default_rng(5)
    partial = rng.random((5, 3, 600))
    out = np.full((600, 3), np.nan)
    kd.sum_partials(partial, 4, out)
    expected = partial[0].copy()
    for b in range(1, 4):
        expected += partial[b]
    np.testing.assert_array_equal(out, expected.T)


def _dense_times_transposed_call():
    X = make_X(np.float64, m=300, n=50)
    F = make_factor(300, np.float64, 13)
    partial = np.empty((10, R, 50))
    return (50, R), lambda out: kd.dense_times_transposed(X, F, partial, out, 30)


def _gram_call():
    G = np.random.default_rng(0).random((9000, 20))
    return (20, 20), lambda out: kf.gram(G, out)


@pytest.mark.parametrize("case", [_dense_times_transposed_call, _gram_call],
                         ids=["dense_times_transposed", "gram"])
def test_block_sums_are_independent_of_threads(case):
    """Kernels that sum per-block partials add them in block order: 1 and 2 threads give
    bitwise the same result."""
    shape, call = case()
    outs = []
    for t in (1, 2):
        with numba_threads(t):
            out = np.empty(shape)
            call(out)
            outs.append(out)
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_cross64(dtype, block, threads):
    """partial[b] = <W_b, X_b Ht> in float64 for each block of rows: their sum is <W, X Ht>."""
    X = make_X(dtype)
    W = ref.f64(make_factor(M, dtype, 10))
    Ht = ref.f64(make_factor(N, dtype, 11))
    nb = (M + block - 1) // block
    partial = np.full(nb, np.nan)
    kd.dense_cross64(X, W, Ht, partial, block)
    P = ref.f64(X) @ Ht
    expected = [float((W[b * block:(b + 1) * block] * P[b * block:(b + 1) * block]).sum())
                for b in range(nb)]
    assert_close(partial, np.array(expected), 1e-12, f"cross block={block}")


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.7, 1.0, 1.3, 1.5, 3.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_beta_blocks_terms_and_loss(dtype, beta, block, threads):
    X = make_X(dtype, positive=beta <= 0)
    F = make_factor(M, dtype, 10, guard_rows=True)
    G = make_factor(N, dtype, 11, guard_rows=True)
    T = np.dtype(dtype).type
    eps = kernel_eps(dtype) if beta >= 1 else T(ref.wh_guard(dtype, beta))
    num = np.full_like(F, -5.0)
    den = np.full_like(F, -5.0)
    rows = np.full(M, -7.0)
    kd.dense_beta_blocks(X, F, G, T(beta), eps, num, den, rows, True, False, block)
    tag = f"beta={beta} block={block}"
    if beta == 1:
        assert_close(num, ref.kl_numerator(X, F, G, float(eps)), RTOL[dtype], "num " + tag)
        assert (den == -5.0).all(), "den is the caller's for KL"
    else:
        assert_close(num, ref.beta_numerator(X, F, G, beta, float(eps)), RTOL[dtype],
                     "num " + tag)
        assert_close(den, ref.beta_denominator(F, G, beta, float(eps)), RTOL[dtype],
                     "den " + tag)
    assert (rows == -7.0).all(), "loss rows written without want_loss"
    num2 = np.full_like(F, -5.0)
    kd.dense_beta_blocks(X, F, G, T(beta), eps, num2, num2, rows, False, True, block)
    assert (num2 == -5.0).all(), "terms written without want_terms"
    assert_close(rows, ref.beta_divergence_rows(X, ref.guarded_model(F, G, float(eps)), beta),
                 RTOL_LOSS[dtype], "loss rows " + tag)


# ------------------------------------------------------------------------------------------
# factor kernels

@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.4])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.7, 0.0), (0.0, 1.3), (0.7, 1.3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mu_apply(dtype, l1, l2, gamma, threads):
    T = np.dtype(dtype).type
    rng = np.random.default_rng(3)
    F = rng.uniform(0.1, 2.0, (M, R)).astype(dtype)
    num = rng.uniform(0.0, 5.0, (M, R)).astype(dtype)
    den = rng.uniform(0.5, 5.0, (M, R)).astype(dtype)
    tiny = T(1e-6)
    if l1 == 0 and l2 == 0:          # den below tiny: the floor decides
        den[2, 1] = 0
        num[2, 1] = T(3e-7)
        den[4, :] = 0
        num[4, :] = 0
    F[7, 3] = 0                      # a zero stays zero
    normal = np.finfo(dtype).tiny    # a result below the smallest normal number is stored as 0
    F[9, 0], num[9, 0], den[9, 0] = 1, T(normal / 4), 1
    expected = ref.mu_factor_step(F, num, den, l1, l2, gamma, float(tiny))
    kf.mu_apply(F, num, den, T(l1), T(l2), T(gamma), tiny)
    assert F.dtype == dtype
    assert_close(F, expected, RTOL[dtype], "mu_apply")
    assert F[7, 3] == 0
    if gamma == 1:
        assert F[9, 0] == 0
    assert not ((F != 0) & (np.abs(F) < normal)).any(), "a subnormal was stored"


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.7, 1.3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mu_apply_shared(dtype, l1, l2, threads):
    """The step with one 1 x r denominator row for every row (KL) is the reference step with
    that row repeated; a denominator entry of 0 takes the tiny floor."""
    T = np.dtype(dtype).type
    rng = np.random.default_rng(13)
    F = rng.uniform(0.1, 2.0, (M, R)).astype(dtype)
    num = rng.uniform(0.0, 5.0, (M, R)).astype(dtype)
    den = rng.uniform(0.5, 5.0, (1, R)).astype(dtype)
    den[0, 1] = 0
    tiny = T(1e-6)
    expected = ref.mu_factor_step(F, num, np.repeat(den, M, axis=0), l1, l2, 1.0, float(tiny))
    kf.mu_apply_shared(F, num, den, T(l1), T(l2), T(1), tiny)
    assert_close(F, expected, RTOL[dtype], "mu_apply_shared")


@pytest.mark.parametrize("out_dtype", [None, np.float64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_column_sums(dtype, out_dtype, threads):
    """Column sums against NumPy's float64 sums, for 0 rows, fewer rows than a block and many
    blocks (a part one at the end); float32 sums are added in float64 and rounded once."""
    rng = np.random.default_rng(14)
    for m in (0, 5, 16 * kf.GRAM_MIN_ROWS + 7, 40 * kf.GRAM_MIN_ROWS + 3):
        G = rng.uniform(0.0, 1.0, (m, R)).astype(dtype)
        out = np.full(R, np.nan, dtype=out_dtype or dtype)
        kf.column_sums(G, out)
        exact = G.astype(np.float64).sum(axis=0)
        tol = 1e-13 if out.dtype == np.float64 else 1e-7
        assert np.all(np.abs(out - exact) <= tol * np.maximum(exact, 1)), m


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.7, 1.3)])
@pytest.mark.parametrize("rows", [1, 63, 64, 65, M])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mu_apply_gram(dtype, rows, l1, l2, gamma, threads):
    """The Frobenius step with den = F @ gram made inside the kernel equals the reference step
    given den from NumPy; row counts around the kernel's 64-row blocks."""
    T = np.dtype(dtype).type
    rng = np.random.default_rng(4)
    F = rng.uniform(0.1, 2.0, (rows, R)).astype(dtype)
    G = rng.uniform(0.0, 1.0, (9, R))
    gram = (G.T @ G).astype(dtype)
    num = rng.uniform(0.0, 5.0, (rows, R)).astype(dtype)
    tiny = T(1e-6)
    F[0, :] = 0                      # den = l1 (0 without penalty: the floor decides)
    F[-1, 3] = 0                     # a zero stays zero
    den = F.astype(np.float64) @ gram.astype(np.float64)
    expected = ref.mu_factor_step(F, num, den, l1, l2, gamma, float(tiny))
    kf.mu_apply_gram(F, num, gram, T(l1), T(l2), T(gamma), tiny)
    assert F.dtype == dtype
    assert_close(F, expected, RTOL[dtype], "mu_apply_gram")
    assert F[-1, 3] == 0


@pytest.mark.parametrize("kernel", ["hals_sweeps", "hals_sweeps_loop"])
@pytest.mark.parametrize("max_sweeps,delta", [(1, 0.0), (3, 0.1), (50, 0.1), (50, 0.0)])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.8, 0.0), (0.0, 2.0), (0.8, 2.0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hals_sweeps(dtype, l1, l2, max_sweeps, delta, kernel, threads):
    """Both sweep kernels (``hals_sweeps`` takes the lane kernel at this rank) against the
    reference: penalties, the stopping rule, and a coordinate with Q_kk = 0. M = 30 rows
    are three float64 lane groups and a part one, one float32 group and a part one."""
    T = np.dtype(dtype).type
    X = make_X(dtype)
    W = make_factor(M, dtype, 10)
    Ht = make_factor(N, dtype, 11)
    Ht[:, 2] = 0                     # an all-zero column of G: Q_kk = 0, W[:, 2] untouched
    P = (X @ Ht).astype(dtype)
    Q = (Ht.T @ Ht).astype(dtype)
    Q.flat[:: R + 1] += T(l2)
    Q[2, 2] = 0
    expected = ref.hals_sweeps(W, P, Q, l1, max_sweeps, delta * delta)
    col2 = W[:, 2].copy()
    getattr(kf, kernel)(W, P, Q, T(l1), max_sweeps, T(delta * delta))
    assert W.dtype == dtype
    assert np.array_equal(W[:, 2], col2), "a coordinate with Q_kk = 0 was changed"
    assert (W >= 0).all()
    rtol = RTOL[dtype] if max_sweeps == 1 else RTOL_STEP[dtype]
    assert_close(W, expected, rtol, f"hals_sweeps sweeps={max_sweeps} delta={delta}")


# the lane kernel's column blocks of L = 8 (float64) / 16 (float32) entries: shorter than a
# block, one entry, exact blocks, and blocks with every kind of remainder
LANE_RANKS = {np.float64: [1, 3, 8, 13, 20], np.float32: [1, 5, 16, 20, 33]}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hals_sweeps_lanes_every_block_shape(dtype, threads):
    """The lane kernel at ranks that cut a row into every shape of transposed block, with
    whole and part groups (m = 2L + 3, m < L), no rows, and more groups than one task
    takes (a part task at the end), against the reference; rows that stop at different
    sweeps, a NaN in P (its row stays NaN, the others are unaffected), l1 > 0, and a
    coordinate with Q_kk = 0."""
    T = np.dtype(dtype).type
    L = _fixed_rank.lanes(np.dtype(dtype).itemsize)
    rng = np.random.default_rng(21)
    for r in LANE_RANKS[dtype]:
        for m in (2 * L + 3, L - 1, 0, (kf.GROUPS_PER_TASK + 2) * L + 5):
            G = rng.uniform(0.0, 1.0, (15, r))
            F = rng.uniform(0.0, 2.0, (m, r)).astype(dtype)
            P = (rng.uniform(0.0, 1.0, (m, 15)) @ G).astype(dtype)
            Q = (G.T @ G).astype(dtype)
            if r > 2:
                Q[1, 1] = 0
            if m > 4:
                P[4, 0] = np.nan
            expected = ref.hals_sweeps(F, P, Q, 0.05, 20, 0.01)
            kf.hals_sweeps_lanes(F, P, Q, T(0.05), 20, T(0.01))
            if m > 4:
                assert np.isnan(F[4, 0])     # not hidden (the reference's max() drops it)
                F[4] = expected[4] = 0
            assert_close(F, expected, RTOL_STEP[dtype], f"r = {r}, m = {m}")


@pytest.mark.parametrize("kernel", ["hals_sweeps", "hals_sweeps_loop"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hals_sweeps_tiny_or_nan_diagonal(dtype, kernel):
    """A Q_kk below the smallest normal number (a column of G whose squared norm
    underflows) skips coordinate k instead of dividing by it (1 / Q_kk = inf made 0 * inf =
    NaN); a NaN Q_kk is not skipped, so the NaN shows. Both sweep kernels."""
    rng = np.random.default_rng(24)
    r = 5
    G = rng.uniform(0.0, 1.0, (15, r))
    F = rng.uniform(0.0, 2.0, (20, r)).astype(dtype)
    F[0] = 0
    P = (rng.uniform(0.0, 1.0, (20, 15)) @ G).astype(dtype)
    P[0] = 0                         # a zero row of X: P - d = 0 at every coordinate
    Q = (G.T @ G).astype(dtype)
    Q[1, :] = Q[:, 1] = 0
    Q[1, 1] = np.finfo(dtype).tiny / 8       # subnormal
    expected = ref.hals_sweeps(F, P, Q, 0.0, 3, 0.0)
    out = F.copy()
    getattr(kf, kernel)(out, P, Q, dtype(0), 3, dtype(0))
    assert np.isfinite(out).all()
    assert np.array_equal(out[:, 1], F[:, 1])
    assert_close(out, expected, RTOL_STEP[dtype], "subnormal Q_kk")
    Q[1, 1] = np.nan
    out = F.copy()
    getattr(kf, kernel)(out, P, Q, dtype(0), 3, dtype(0))
    assert np.isnan(out[1:, 1]).all()


def test_hals_sweeps_takes_python_scalars():
    """``hals_sweeps`` takes l1 and delta_sq as Python numbers for either dtype (they are
    converted to the factors' dtype, as the loop kernel accepted them)."""
    rng = np.random.default_rng(25)
    G = rng.uniform(0.0, 1.0, (15, 4))
    for dtype in DTYPES:
        F = rng.uniform(0.0, 2.0, (20, 4)).astype(dtype)
        P = (rng.uniform(0.0, 1.0, (20, 15)) @ G).astype(dtype)
        Q = (G.T @ G).astype(dtype)
        expected = ref.hals_sweeps(F, P, Q, 0.1, 3, 0.01)
        kf.hals_sweeps(F, P, Q, 0.1, 3, 0.01)
        kf.hals_sweeps(F[:0], P[:0], Q, 0, 3, 0)
        assert_close(F, expected, RTOL_STEP[dtype], np.dtype(dtype).name)


def test_hals_sweeps_lanes_rows_are_independent():
    """A row's lane never mixes with its group's other lanes: each row swept alone (in a
    group of its own, zero-padded) is bitwise the row swept among L - 1 others, though the
    others stop at other sweeps."""
    rng = np.random.default_rng(22)
    r = 13
    G = rng.uniform(0.0, 1.0, (15, r))
    F = rng.uniform(0.0, 2.0, (8, r))
    P = rng.uniform(0.0, 1.0, (8, 15)) @ G
    P[::3] *= 5.0                       # rows far from their solution sweep longer
    Q = G.T @ G
    together = F.copy()
    kf.hals_sweeps_lanes(together, P, Q, 0.0, 30, 0.01)
    for i in range(8):
        alone = F[i:i + 1].copy()
        kf.hals_sweeps_lanes(alone, np.ascontiguousarray(P[i:i + 1]), Q, 0.0, 30, 0.01)
        assert np.array_equal(alone[0], together[i]), i


def test_hals_sweeps_dispatch(monkeypatch):
    """``hals_sweeps`` takes the lane kernel for C-contiguous arrays of one dtype up to
    ``HALS_LANE_MAX_RANK``, else the loop kernel; same result both ways."""
    rng = np.random.default_rng(23)
    r = 6
    G = rng.uniform(0.0, 1.0, (15, r))
    F = rng.uniform(0.0, 2.0, (20, r))
    P = rng.uniform(0.0, 1.0, (20, 15)) @ G
    Q = G.T @ G
    expected = ref.hals_sweeps(F, P, Q, 0.0, 4, 0.0)
    calls = []
    for name in ("hals_sweeps_lanes", "hals_sweeps_loop"):
        kern = getattr(kf, name)
        monkeypatch.setattr(kf, name, lambda *a, _k=kern, _n=name, **kw: calls.append(_n)
                            or _k(*a, **kw))
    for layout, limit, want in (("C", 6, "hals_sweeps_lanes"), ("C", 5, "hals_sweeps_loop"),
                                ("F", 6, "hals_sweeps_loop")):
        monkeypatch.setitem(kf.HALS_LANE_MAX_RANK, 8, limit)
        out = np.array(F, order=layout)
        kf.hals_sweeps(out, P, Q, 0.0, 4, 0.0)
        assert calls.pop() == want
        assert_close(out, expected, 1e-12, f"{layout} limit {limit}")


# ------------------------------------------------------------------------------------------
# data operators

def operator_case(fmt, dtype, beta, guard_rows=False):
    X = make_X(dtype, positive=beta <= 0)
    Xin, Xv = check_X_for(X, fmt, beta)
    op = make_operator(Xv)
    assert isinstance(op, DenseOperator if fmt == "dense" else CsrOperator)
    W = make_factor(M, dtype, 10, guard_rows=guard_rows)
    Ht = make_factor(N, dtype, 11, guard_rows=guard_rows)
    return Xin, op, W, Ht


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_operator_product(fmt, dtype, threads, kernel_rule):
    Xin, op, W, Ht = operator_case(fmt, dtype, 2.0)
    for side, G, rows, expected in (("W", Ht, M, ref.product(Xin, Ht)),
                                    ("H", W, N, ref.product(ref.dense64(Xin).T, W))):
        out = np.full((rows, R), np.nan, dtype=dtype)
        res = op.product(side, G, out)
        assert res is out and out.dtype == dtype
        assert_close(out, expected, RTOL[dtype], f"product side {side}")


@pytest.mark.parametrize("m", [1, 7, 255, 256, 257, 4100, 9000])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gram(dtype, m, threads):
    """G^T G from row blocks (one to GRAM_BLOCKS of them) summed in order, against NumPy in
    float64; ``out`` starts as NaN."""
    G = np.random.default_rng(m).uniform(0.2, 1.2, (m, 6)).astype(dtype)
    out = np.full((6, 6), np.nan, dtype=dtype)
    kf.gram(G, out)
    assert out.dtype == dtype
    G64 = G.astype(np.float64)
    assert_close(out, G64.T @ G64, RTOL[dtype], f"gram m={m}")


@pytest.mark.parametrize("beta", [0.5, 1.3, 1.5, 2.5])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_beta_loss_near_an_exact_fit(fmt, beta):
    """At X = WH (1 + 1e-5 noise) the loss is about 1e-10 of sum x^beta, so its entries'
    terms cancel almost entirely. Against an extended-precision reference of the per-entry
    d_beta, the operators' float64 loss must stay within 5e-7 relative: each entry's terms
    are added at its own scale (a row sum that grouped sum x^beta, or wh^beta by two
    different powers, apart had 1e-6 - 6.5e-6)."""
    rng = np.random.default_rng(5)
    W = rng.random((40, 5))
    H = rng.random((5, 300))
    Y = W @ H
    X = Y * (1.0 + 1e-5 * rng.standard_normal(Y.shape))
    Xl, Yl, b = X.astype(np.longdouble), Y.astype(np.longdouble), np.longdouble(beta)
    want = float(((Xl**b + (b - 1) * Yl**b - b * Xl * Yl**(b - 1)) / (b * (b - 1))).sum())
    Xv = sp.csr_matrix(X) if fmt == "csr" else np.ascontiguousarray(X)
    got = make_operator(Xv).loss(W, np.ascontiguousarray(H.T), beta)
    assert abs(got / want - 1.0) <= 5e-7, (got, want)


@pytest.mark.parametrize("m,n,partials", [(2000, 30, True), (30, 2000, False), (30, 20, False)])
def test_dense_operator_transposed_product(m, n, partials):
    """X^T W on dense X: from per-block partials of a tall X (no transposed copy made, also
    not by a whole Frobenius MU or HALS step with its loss), from row blocks of the copy
    X^T otherwise; both against NumPy. A KL MU step on the tall X takes the one-pass step
    and makes no copy either; the beta kernels of side H make the copy at first use and keep
    it."""
    X = make_X(np.float64, m=m, n=n)
    op = make_operator(np.ascontiguousarray(X))
    W = make_factor(m, np.float64, 10)
    Ht = make_factor(n, np.float64, 11)
    assert bool(op._transposed_block(R)) == partials
    out = np.full((n, R), np.nan)
    op.product("H", W, out)
    assert_close(out, ref.product(X.T, W), RTOL[np.float64], "X^T W")
    assert (op._XT is None) == partials
    for solver in (MU(op, W.copy(), Ht.copy(), 2.0, Penalty()),
                   HALS(op, W.copy(), Ht.copy(), 2.0, Penalty())):
        solver.step(want_loss=True)
        assert (op._XT is None) == partials
    MU(op, W.copy(), Ht.copy(), 1.0, Penalty()).step(want_loss=True)
    assert (op._XT is None) == partials
    op.beta_terms("H", Ht, W, 1.0, np.empty_like(Ht), np.empty((1, R), dtype=Ht.dtype))
    assert op._XT is not None and op.XT is op._XT
    assert np.array_equal(op.XT, X.T) and op.XT.flags.c_contiguous


@pytest.mark.parametrize("beta", [1.0, 0.5, 1.5, 3.0, 0.0])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_operator_beta_terms(fmt, dtype, beta, threads, kernel_rule):
    Xin, op, W, Ht = operator_case(fmt, dtype, beta, guard_rows=True)
    eps = ref.wh_guard(dtype, beta)
    A = ref.dense64(Xin)
    # side W, then side H, then W again on the same operator (reused buffers)
    for side in ("W", "H", "W"):
        F, G, Aside = (W, Ht, A) if side == "W" else (Ht, W, A.T)
        num = np.full(F.shape, np.nan, dtype=dtype)
        # KL: one 1 x r denominator row (the column sums of G) shared by every row
        den = np.full((1, F.shape[1]) if beta == 1 else F.shape, np.nan, dtype=dtype)
        op.beta_terms(side, F, G, beta, num, den)
        assert num.dtype == dtype and den.dtype == dtype
        tag = f"side {side} beta={beta}"
        assert_close(num, ref.beta_numerator(Aside, F, G, beta, eps), RTOL[dtype], "num " + tag)
        expected = ref.beta_denominator(F, G, beta, eps)
        if beta == 1:
            assert np.allclose(expected, expected[0])
            expected = expected[:1]
        assert_close(den, expected, RTOL[dtype], "den " + tag)
        if beta == 1:
            assert_close(num, ref.kl_numerator(Aside, F, G, eps), RTOL[dtype], "KL num " + tag)


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5, 1.5, 3.0, 0.0])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_operator_loss(fmt, dtype, beta, threads, kernel_rule):
    Xin, op, W, Ht = operator_case(fmt, dtype, beta, guard_rows=beta != 2)
    expected = ref.model_loss(Xin, W, Ht, beta, eps=ref.wh_guard(dtype, beta))
    W0, Ht0 = W.copy(), Ht.copy()
    assert_scalar_close(op.loss(W, Ht, beta), expected, RTOL_LOSS[dtype], f"loss beta={beta}")
    assert np.array_equal(W, W0) and np.array_equal(Ht, Ht0), "loss modified the factors"
    if beta == 2:   # with the product X Ht passed in by the caller: <W, X Ht> = <W, P>
        P = np.ascontiguousarray(ref.dense64(Xin) @ ref.f64(Ht))
        assert_scalar_close(op.loss(W, Ht, beta, cross_from=(ref.f64(W), P)), expected,
                            RTOL_LOSS[dtype], "loss with cross")
    # a second, different evaluation on the same operator (no stale buffers)
    W2 = np.ascontiguousarray(W[::-1])
    assert_scalar_close(op.loss(W2, Ht, beta),
                        ref.model_loss(Xin, W2, Ht, beta, eps=ref.wh_guard(dtype, beta)),
                        RTOL_LOSS[dtype], f"second loss beta={beta}")



@pytest.mark.parametrize("fmt", FORMATS)
def test_float32_frobenius_loss_survives_cancellation(fmt, threads):
    """A close fit to large values: the loss is ~1e-7 of ||X||^2, so the Gram identity
    subtracts numbers 1e7 times larger than its result. The float32 operator must still
    give the float64 loss of its (float32) data and factors, directly and through a solver
    (whose Frobenius loss may reuse the product of its last update)."""
    rng = np.random.default_rng(7)
    W = rng.uniform(0.0, 30.0, (M, R))
    Ht = rng.uniform(0.0, 30.0, (N, R))
    X = W @ Ht.T * rng.uniform(0.999, 1.001, (M, N))
    X32, W32, Ht32 = (np.ascontiguousarray(a, dtype=np.float32) for a in (X, W, Ht))
    Xin = X32 if fmt == "dense" else make_csr(X32, np.int32 if fmt == "csr-int32" else np.int64)
    op = make_operator(check_X(Xin, 2.0))

    def exact(Wf, Hf):  # float64 loss of the float32 values, by the definition
        D = ref.f64(X32) - ref.f64(Wf) @ ref.f64(Hf).T
        return 0.5 * float((D * D).sum())

    expected = exact(W32, Ht32)
    assert expected < 1e-5 * 0.5 * float((ref.f64(X32) ** 2).sum())  # cancellation is real
    assert_scalar_close(op.loss(W32, Ht32, 2.0), expected, 1e-6, "float32 loss")
    for cls in (MU, HALS):
        s = cls(op, W32.copy(), Ht32.copy(), 2.0, Penalty())
        obj = s.step(True)
        assert_scalar_close(obj, exact(s.W, s.Ht), 1e-6, f"{cls.__name__} objective")


# ------------------------------------------------------------------------------------------
# unsorted / duplicate CSR indices through check_X

def unsorted_csr(X, idx_dtype, duplicates, seed=4):
    """A CSR of X whose column indices are shuffled within every row; with ``duplicates``,
    some entries are split into two stored parts at the same (i, j)."""
    rng = np.random.default_rng(seed)
    C = sp.csr_matrix(X)
    data, indices = [], []
    indptr = [0]
    for i in range(C.shape[0]):
        lo, hi = C.indptr[i], C.indptr[i + 1]
        d = list(C.data[lo:hi])
        j = list(C.indices[lo:hi])
        if duplicates and len(d) >= 2:
            d[0], d[1] = d[0] * 0.25, d[1] * 0.5
            d += [C.data[lo] * 0.75, C.data[lo + 1] * 0.5]
            j += [C.indices[lo], C.indices[lo + 1]]
        perm = rng.permutation(len(d))
        data += [d[p] for p in perm]
        indices += [j[p] for p in perm]
        indptr.append(len(data))
    A = sp.csr_matrix((np.array(data, dtype=X.dtype), np.array(indices, dtype=idx_dtype),
                       np.array(indptr, dtype=idx_dtype)), shape=X.shape)
    A.indices = A.indices.astype(idx_dtype)     # the constructor may downcast
    A.indptr = A.indptr.astype(idx_dtype)
    return A


def rows_sorted_unique(A):
    return all((np.diff(A.indices[A.indptr[i]:A.indptr[i + 1]]) > 0).all()
               for i in range(A.shape[0]))


@pytest.mark.parametrize("duplicates", [False, True], ids=["unsorted", "unsorted+dup"])
@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_check_X_canonicalizes_unsorted_csr(dtype, idx_dtype, duplicates, threads):
    X = make_X(dtype)
    A = unsorted_csr(X, idx_dtype, duplicates)
    assert not rows_sorted_unique(A)
    saved = (A.data.copy(), A.indices.copy(), A.indptr.copy())
    Xdense = ref.dense64(A)                            # SciPy's dense view (sums duplicates)
    np.testing.assert_allclose(Xdense, X.astype(np.float64), rtol=1e-6)

    Xv = check_X(A, 1.0)

    # the caller's matrix is untouched, and no array of it is shared with a mutated copy
    assert np.array_equal(A.data, saved[0]) and A.data.dtype == saved[0].dtype
    assert np.array_equal(A.indices, saved[1]) and A.indices.dtype == saved[1].dtype
    assert np.array_equal(A.indptr, saved[2]) and A.indptr.dtype == saved[2].dtype
    assert not rows_sorted_unique(A)
    # the result is canonical, same values, same float dtype
    assert sp.issparse(Xv) and Xv.format == "csr"
    assert Xv.dtype == dtype
    assert rows_sorted_unique(Xv)
    assert Xv.indptr.dtype == Xv.indices.dtype
    np.testing.assert_allclose(Xv.toarray(), Xdense, rtol=RTOL[dtype])

    # and the kernels / operator on it match the reference of the caller's matrix
    W = make_factor(M, dtype, 10)
    Ht = make_factor(N, dtype, 11)
    op = make_operator(Xv)
    out = np.empty((M, R), dtype=dtype)
    assert_close(op.product("W", Ht, out), ref.product(Xdense, Ht), RTOL[dtype], "product W")
    out = np.empty((N, R), dtype=dtype)
    assert_close(op.product("H", W, out), ref.product(Xdense.T, W), RTOL[dtype], "product H")
    for beta in (1.0, 1.5):
        eps = ref.wh_guard(dtype, beta)
        num = np.empty((M, R), dtype=dtype)
        den = np.empty((1 if beta == 1 else M, R), dtype=dtype)   # KL: one shared row
        op.beta_terms("W", W, Ht, beta, num, den)
        assert_close(num, ref.beta_numerator(Xdense, W, Ht, beta, eps), RTOL[dtype], "num")
        assert_close(den, ref.beta_denominator(W, Ht, beta, eps)[:len(den)], RTOL[dtype],
                     "den")
    for beta in (2.0, 1.0, 0.5):
        assert_scalar_close(op.loss(W, Ht, beta),
                            ref.model_loss(Xdense, W, Ht, beta, eps=ref.wh_guard(dtype, beta)),
                            RTOL_LOSS[dtype], f"loss beta={beta}")


# ------------------------------------------------------------------------------------------
# solvers: one step against the reference iteration

PENALTIES = {
    "none": dict(),
    "l1": dict(l1_W=2.0, l1_H=1.0),
    "l2": dict(l2_W=1.5, l2_H=3.0),
    "l1l2": dict(l1_W=2.0, l2_W=1.5, l1_H=1.0, l2_H=3.0),
}


def nonzeros(X):
    """Number of nonzero values of X (stored zeros of a CSR matrix do not count): the
    ``entries`` of HALS's sweep-count rule, the same for every storage of the same X."""
    return int(np.count_nonzero(ref.dense64(X)))


def solver_case(fmt, dtype, beta):
    X = make_X(dtype, positive=beta <= 0)
    Xin, Xv = check_X_for(X, fmt, beta)
    W = make_factor(M, dtype, 20)
    Ht = make_factor(N, dtype, 21)
    return Xin, Xv, W, Ht


@pytest.mark.parametrize("pen", list(PENALTIES))
@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5, 1.5, 3.0, 0.0])
@pytest.mark.parametrize("fmt", ["dense", "csr-int32"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mu_step(dtype, fmt, beta, pen, threads, kernel_rule):
    Xin, Xv, W, Ht = solver_case(fmt, dtype, beta)
    kw = PENALTIES[pen]
    W_ref, Ht_ref = ref.mu_iteration(Xin, W, Ht, beta, eps=ref.wh_guard(dtype, beta),
                                     tiny=np.sqrt(np.finfo(dtype).tiny), **kw)
    solver = MU(make_operator(Xv), W.copy(), Ht.copy(), beta, Penalty(**kw))
    W_id, Ht_id = id(solver.W), id(solver.Ht)
    obj = solver.step(True)
    assert id(solver.W) == W_id and id(solver.Ht) == Ht_id, "factors not updated in place"
    assert solver.W.dtype == dtype and solver.Ht.dtype == dtype
    tag = f"MU beta={beta} {pen}"
    assert_close(solver.W, W_ref, RTOL_STEP[dtype], "W " + tag)
    assert_close(solver.Ht, Ht_ref, RTOL_STEP[dtype], "Ht " + tag)
    expected_obj = (ref.model_loss(Xin, solver.W, solver.Ht, beta)
                    + ref.penalty(solver.W, kw.get("l1_W", 0), kw.get("l2_W", 0))
                    + ref.penalty(solver.Ht, kw.get("l1_H", 0), kw.get("l2_H", 0)))
    assert_scalar_close(obj, expected_obj, RTOL_LOSS[dtype], "objective " + tag)
    assert solver.step(False) is None


@pytest.mark.parametrize("beta,m", [(2.0, 4096), (2.0, 4100), (1.0, 4100), (1.5, 4100)])
@pytest.mark.parametrize("pen", ["none", "l1l2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mu_step_on_tall_dense_x_reads_x_once(dtype, pen, beta, m, threads, monkeypatch):
    """On a tall dense X an MU iteration takes the one-pass W step (W updated and the H
    step's terms, X^T W or the beta terms, made in one pass over X): the iteration is still
    the reference one, its H step makes no terms of its own with X, and no copy of X^T is
    ever made. m = 4100 leaves a short last block."""
    n = 512
    X = make_X(dtype, positive=beta != 2, m=m, n=n)
    W = make_factor(m, dtype, 20)
    Ht = make_factor(n, dtype, 21)
    kw = PENALTIES[pen]
    op = make_operator(np.ascontiguousarray(X))
    calls = []
    fused = op.mu_w_step_one_pass
    monkeypatch.setattr(op, "mu_w_step_one_pass",
                        lambda *a: calls.append(fused(*a)) or calls[-1])
    plain = "product" if beta == 2 else "beta_terms"
    monkeypatch.setattr(op, plain, lambda *a: calls.append(plain))
    solver = MU(op, W.copy(), Ht.copy(), beta, Penalty(**kw))
    obj = solver.step(True)
    assert calls == [True]
    assert op._XT is None
    W_ref, Ht_ref = ref.mu_iteration(X, W, Ht, beta, eps=ref.wh_guard(dtype, beta),
                                     tiny=np.sqrt(np.finfo(dtype).tiny), **kw)
    assert_close(solver.W, W_ref, RTOL_STEP[dtype], "W")
    assert_close(solver.Ht, Ht_ref, RTOL_STEP[dtype], "Ht")
    expected_obj = (ref.model_loss(X, solver.W, solver.Ht, beta)
                    + ref.penalty(solver.W, kw.get("l1_W", 0), kw.get("l2_W", 0))
                    + ref.penalty(solver.Ht, kw.get("l1_H", 0), kw.get("l2_H", 0)))
    assert_scalar_close(obj, expected_obj, RTOL_LOSS[dtype], "objective")


@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_mu_fused_w_step_only_with_both_sides(beta):
    """With H fixed (update_H=False, as in transform) the W step takes the plain path: the
    fused one would make the H step's terms for nothing."""
    X = make_X(np.float64, m=4096, n=512)
    op = make_operator(np.ascontiguousarray(X))
    solver = MU(op, make_factor(4096, np.float64, 1), make_factor(512, np.float64, 2), beta,
                Penalty(), update_H=False)
    solver.step(False)
    assert not op._buffers   # no partial products made


@pytest.mark.parametrize("pen", list(PENALTIES))
@pytest.mark.parametrize("fmt", ["dense", "csr-int32", "csr-int64"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hals_step(dtype, fmt, pen, threads, kernel_rule):
    Xin, Xv, W, Ht = solver_case(fmt, dtype, 2.0)
    kw = PENALTIES[pen]
    entries = nonzeros(Xin)
    sweeps_W = ref.hals_sweep_count(entries, M, N, R)
    sweeps_H = ref.hals_sweep_count(entries, N, M, R)
    assert sweeps_W > 1 and sweeps_H > 1, "the case should exercise repeated sweeps"
    W_ref, Ht_ref = ref.hals_iteration(Xin, W, Ht, sweeps_W=sweeps_W, sweeps_H=sweeps_H,
                                       delta_sq=0.1 ** 2, **kw)
    solver = HALS(make_operator(Xv), W.copy(), Ht.copy(), 2.0, Penalty(**kw))
    obj = solver.step(True)
    assert solver.W.dtype == dtype and solver.Ht.dtype == dtype
    tag = f"HALS {pen}"
    assert_close(solver.W, W_ref, RTOL_STEP[dtype], "W " + tag)
    assert_close(solver.Ht, Ht_ref, RTOL_STEP[dtype], "Ht " + tag)
    expected_obj = (ref.model_loss(Xin, solver.W, solver.Ht, 2.0)
                    + ref.penalty(solver.W, kw.get("l1_W", 0), kw.get("l2_W", 0))
                    + ref.penalty(solver.Ht, kw.get("l1_H", 0), kw.get("l2_H", 0)))
    assert_scalar_close(obj, expected_obj, RTOL_LOSS[dtype], "objective " + tag)


def _boundary_problem():
    """30 x 20 X with 199 nonzeros: HALS's sweep count for H is floor(1 + 0.5 rho) with
    rho = (199*4 + 30*16) / (20*16) = 3.99 -> 2 sweeps; counting 201 entries (two stored
    zeros) would give rho = 4.01 -> 3 sweeps. Returns (X, CSR of X with 2 stored zeros)."""
    rng = np.random.default_rng(7)
    X = np.zeros((M, N))
    X.flat[rng.choice(M * N, 199, replace=False)] = rng.uniform(1.0, 3.0, 199)
    coo = sp.coo_matrix(X)
    zeros = np.argwhere(X == 0)[:2]
    A = sp.csr_matrix((np.r_[coo.data, 0.0, 0.0],
                       (np.r_[coo.row, zeros[:, 0]], np.r_[coo.col, zeros[:, 1]])),
                      shape=X.shape)
    assert A.nnz == 201 and np.array_equal(A.toarray(), X)
    return X, A


@pytest.mark.parametrize("fmt", ["dense", "csr-stored-zeros"])
def test_hals_stored_zeros_do_not_change_the_step(fmt, kernel_rule):
    """The same X stored densely or as CSR with explicit zeros takes the same HALS step."""
    X, A = _boundary_problem()
    W = make_factor(M, np.float64, 20)
    Ht = make_factor(N, np.float64, 21)
    entries = nonzeros(X)
    W_ref, Ht_ref = ref.hals_iteration(X, W, Ht, sweeps_W=ref.hals_sweep_count(entries, M, N, R),
                                       sweeps_H=ref.hals_sweep_count(entries, N, M, R),
                                       delta_sq=0.1 ** 2)
    Xv = check_X(X if fmt == "dense" else A, 2.0)
    s = HALS(make_operator(Xv), W.copy(), Ht.copy(), 2.0, Penalty())
    s.step(False)
    assert_close(s.W, W_ref, RTOL_STEP[np.float64], "W")
    assert_close(s.Ht, Ht_ref, RTOL_STEP[np.float64], "Ht")


@pytest.mark.parametrize("solver_cls,beta", [(MU, 1.0), (MU, 2.0), (HALS, 2.0)])
@pytest.mark.parametrize("fmt", ["dense", "csr-int32"])
def test_solver_single_side(solver_cls, beta, fmt, kernel_rule):
    """update_W=False / update_H=False: the frozen factor is bit-for-bit unchanged, the other
    one matches the reference half-iteration."""
    dtype = np.float64
    Xin, Xv, W, Ht = solver_case(fmt, dtype, beta)
    eps, tiny = ref.wh_guard(dtype, beta), np.sqrt(np.finfo(dtype).tiny)
    # only H: reference iteration from the same W (W is not updated, so H sees the old W)
    s = solver_cls(make_operator(Xv), W.copy(), Ht.copy(), beta, Penalty(), update_W=False)
    s.step(False)
    assert np.array_equal(s.W, W)
    A = ref.dense64(Xin)
    if solver_cls is MU:
        num, den = ref.mu_side_terms(A.T, Ht, W, beta, eps)
        Ht_ref = ref.mu_factor_step(Ht, num, den, 0, 0, ref.mu_exponent(beta), tiny)
    else:
        entries = nonzeros(Xin)
        Ht_ref = ref.hals_sweeps(Ht, A.T @ ref.f64(W), ref.f64(W).T @ ref.f64(W), 0.0,
                                 ref.hals_sweep_count(entries, N, M, R), 0.01)
    assert_close(s.Ht, Ht_ref, RTOL_STEP[dtype], "H only")
    # only W
    s = solver_cls(make_operator(Xv), W.copy(), Ht.copy(), beta, Penalty(), update_H=False)
    s.step(False)
    assert np.array_equal(s.Ht, Ht)
    if solver_cls is MU:
        num, den = ref.mu_side_terms(A, W, Ht, beta, eps)
        W_ref = ref.mu_factor_step(W, num, den, 0, 0, ref.mu_exponent(beta), tiny)
    else:
        entries = nonzeros(Xin)
        W_ref = ref.hals_sweeps(W, A @ ref.f64(Ht), ref.f64(Ht).T @ ref.f64(Ht), 0.0,
                                ref.hals_sweep_count(entries, M, N, R), 0.01)
    assert_close(s.W, W_ref, RTOL_STEP[dtype], "W only")


# ------------------------------------------------------------------------------------------
# thread-count independence (bitwise) on CSR

def _run_csr_everything(dtype, idx_dtype):
    """Every CSR kernel, operator method and solver step once; returns all outputs."""
    T = np.dtype(dtype).type
    results = []
    X = make_X(dtype)
    A = make_csr(X, idx_dtype, explicit_zeros=2)
    AT = csr_transpose(A, idx_dtype)
    W = make_factor(M, dtype, 10, guard_rows=True)
    Ht = make_factor(N, dtype, 11, guard_rows=True)
    eps = kernel_eps(dtype)
    for mat, F, G in ((A, W, Ht), (AT, Ht, W)):
        out = np.empty_like(F)
        ks.csr_times_dense(mat.indptr, mat.indices, mat.data, G, out)
        results.append(out)
        out = np.empty_like(F)
        ks.csr_kl_numerator(mat.indptr, mat.indices, mat.data, F, G, eps, out)
        results.append(out)
        rows = np.empty(mat.shape[0])
        ks.csr_kl_loss_rows(mat.indptr, mat.indices, mat.data, F, G, eps, rows)
        results.append(rows)
        for beta in (0.5, 1.5, 3.0):
            num, den, rows = np.empty_like(F), np.empty_like(F), np.empty(mat.shape[0])
            ks.csr_beta_tiles(mat.indptr, mat.indices, mat.data, F, G, T(beta), eps,
                              num, den, rows, True, True, 3, 7)
            results += [num, den, rows]
    # factor kernels (row-parallel too)
    F = W.copy()
    kf.mu_apply(F, results[0], results[1], T(0.3), T(0.2), T(0.5), T(1e-6))
    results.append(F)
    F = W.copy()
    kf.mu_apply_gram(F, results[0], Ht.T @ Ht, T(0.3), T(0.2), T(0.5), T(1e-6))
    results.append(F)
    F = W.copy()
    Q = Ht.T @ Ht
    kf.hals_sweeps(F, results[0], Q, T(0.1), 5, T(0.01))
    results.append(F)
    # operator methods and solver steps
    op = make_operator(check_X(A, 1.0))
    for side, F, G in (("W", W, Ht), ("H", Ht, W)):
        results.append(op.product(side, G, np.empty_like(F)))
        for beta in (1.0, 0.5, 1.5, 3.0):
            num, den = np.empty_like(F), np.empty_like(F[:1] if beta == 1 else F)
            op.beta_terms(side, F, G, beta, num, den)
            results += [num, den]
    for beta in (2.0, 1.0, 0.5, 1.5, 3.0):
        results.append(np.array(op.loss(W, Ht, beta)))
    Wp, Htp = make_factor(M, dtype, 20), make_factor(N, dtype, 21)
    for cls, beta in ((MU, 1.0), (MU, 1.5), (MU, 2.0), (HALS, 2.0)):
        s = cls(op, Wp.copy(), Htp.copy(), beta, Penalty(l1_W=0.5, l2_H=0.5))
        for _ in range(3):
            obj = s.step(True)
        results += [s.W, s.Ht, np.array(obj)]
    return results


@pytest.mark.parametrize("idx_dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_bitwise_identical_across_threads(dtype, idx_dtype, kernel_rule):
    with numba_threads(1):
        one = _run_csr_everything(dtype, idx_dtype)
    with numba_threads(2):
        two = _run_csr_everything(dtype, idx_dtype)
    assert len(one) == len(two)
    for k, (a, b) in enumerate(zip(one, two)):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b), f"output #{k} differs between 1 and 2 threads"
        assert a.tobytes() == b.tobytes(), f"output #{k} differs bitwise (e.g. -0.0 vs 0.0)"


def test_transposed_panels_are_x_transposed():
    """Concatenated row by row, the panels are X^T exactly: global, sorted column indices,
    the same values; for several panels one shared indices and one data array of X's nnz."""
    from fastnmf._data import transposed_panels
    A = make_csr(make_X(np.float64), np.int32, explicit_zeros=2)
    XT = csr_transpose(A, np.int32)
    for count in (1, 2, 5, M):
        panels = transposed_panels(A, count)
        assert len(panels) == count
        for j in range(N):
            cols = np.concatenate([ind[ptr[j]:ptr[j + 1]] for ptr, ind, _ in panels])
            vals = np.concatenate([dat[ptr[j]:ptr[j + 1]] for ptr, _, dat in panels])
            assert np.array_equal(cols, XT.indices[XT.indptr[j]:XT.indptr[j + 1]])
            assert np.array_equal(vals, XT.data[XT.indptr[j]:XT.indptr[j + 1]])
        if count > 1:
            assert all(p[1].base is panels[0][1].base is not None for p in panels)
            assert all(p[2].base is panels[0][2].base is not None for p in panels)
            assert sum(p[1].size for p in panels) == A.nnz


def test_panel_count_rule():
    """ceil(G's bytes / PANEL_BYTES) panels for rows of the fixed-rank kernels while X^T W
    stays within PANEL_OUT_BYTES; one panel otherwise, and where the problem takes the loop
    kernels (``fixed`` False)."""
    from fastnmf._data import PANEL_BYTES, panel_count
    big = np.zeros((300_000, 32))
    assert panel_count(300_000, 50_000, big) == -(-big.nbytes // PANEL_BYTES) == 13
    assert panel_count(300_000, 50_000, big.astype(np.float32)) == 7
    assert panel_count(50_000, 20_000, np.zeros((50_000, 20))) == 2
    assert panel_count(50_000, 20_000, np.zeros((50_000, 20), np.float32)) == 1
    assert panel_count(2_000_000, 500_000, np.zeros((2_000_000, 20))) == 1   # X^T W 80 MB
    assert panel_count(300_000, 5_000, np.zeros((300_000, 65))) == 1         # loop kernels
    assert panel_count(300_000, 5_000, np.asfortranarray(big)) == 1
    assert panel_count(30, 20, np.zeros((30, 4))) == 1
    assert panel_count(300_000, 50_000, big, by_rank=False) == 1


RANK_KERNELS = ("csr_times_dense_fixed", "csr_kl_numerator_fixed", "csr_kl_loss_rows_fixed",
                "mu_apply_gram_fixed", "hals_sweeps_lanes")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_rank_kernels_only_for_problems_large_enough(dtype, monkeypatch):
    """A problem whose work nnz r + (m + n) r^2 is below RANK_KERNEL_MIN_WORK calls no
    rank-specialized kernel, only the loop kernels' copy shared by every rank, and keeps X^T
    in one panel (the panels' adding kernels are rank kernels), so a small fit at a new rank
    compiles nothing; at the limit every fit calls its rank kernels. Dense and CSR storage of
    one matrix decide alike (stored zeros do not count). MU (beta 1 and 2, the loss
    included) and HALS steps agree both ways to rounding."""
    import fastnmf._data as D
    monkeypatch.setattr(D, "PANEL_BYTES", 64)     # X^T in panels wherever the rule allows
    A = make_csr(make_X(dtype), np.int32, explicit_zeros=2)
    X = A.toarray()
    r = R
    W = make_factor(M, dtype, 10)
    Ht = make_factor(N, dtype, 11)
    work = int(np.count_nonzero(X)) * r + (M + N) * r * r
    called = []
    for name in RANK_KERNELS:
        module = ks if hasattr(ks, name) else kf
        kern = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _k=kern, _n=name: called.append(_n) or _k(*a))
    for kern in (ks.csr_times_dense_loop, ks.csr_kl_numerator_loop, ks.csr_kl_loss_rows_loop,
                 kf.hals_sweeps_loop):
        for copy in ("single", "narrow"):     # picked by the rank: compiled per copy
            monkeypatch.setattr(kern, copy, lambda *a, _n=copy: called.append(_n))
    results = {}
    for limit in (work + 1, work):
        monkeypatch.setattr(D, "RANK_KERNEL_MIN_WORK", limit)
        ops = [make_operator(check_X(X, 1.0)), make_operator(check_X(A, 1.0))]
        assert [op.rank_kernels(r) for op in ops] == [limit == work] * 2
        called.clear()
        steps = []
        for cls, beta in ((MU, 1.0), (MU, 2.0), (HALS, 2.0)):
            s = cls(ops[1], W.copy(), Ht.copy(), beta, Penalty())
            for _ in range(3):
                loss = s.step(True)
            steps += [s.W, s.Ht, np.array(loss)]
        results[limit == work] = steps
        assert set(called) == (set(RANK_KERNELS) if limit == work else set())
        assert (len(ops[1].panels()) > 1) == (limit == work)
    for k, (fixed, loop) in enumerate(zip(results[True], results[False])):
        assert_close(fixed, loop, RTOL_STEP[dtype], f"output #{k}, rank kernels vs loops")


def _csr_steps_in_panels(dtype, monkeypatch):
    import fastnmf._data as D
    monkeypatch.setattr(D, "PANEL_BYTES", 64)    # a panel per 2 (float64) or 4 rows of W
    monkeypatch.setattr(D, "RANK_KERNEL_MIN_WORK", 0)   # panels need the fixed-rank kernels
    A = make_csr(make_X(dtype), np.int32, explicit_zeros=2)
    op = make_operator(check_X(A, 1.0))
    W = make_factor(M, dtype, 10, guard_rows=True)
    Ht = make_factor(N, dtype, 11, guard_rows=True)
    results = [op.product("H", W, np.full_like(Ht, np.nan))]
    assert len(op.panels()) == D.panel_count(M, N, W) == -(-W.nbytes // 64) > 5
    num, den = np.full_like(Ht, np.nan), np.empty_like(Ht[:1])
    op.beta_terms("H", Ht, W, 1.0, num, den)
    results.append(num)
    for cls, beta in ((MU, 1.0), (MU, 2.0), (HALS, 2.0)):
        s = cls(op, W.copy(), Ht.copy(), beta, Penalty(l1_W=0.5, l2_H=0.5))
        for _ in range(3):
            obj = s.step(True)
        results += [s.W, s.Ht, np.array(obj)]
    return A, W, Ht, results


def test_csr_operator_in_panels_any_output_layout(monkeypatch):
    """With X^T in panels, a strided output of side H gets the same X^T W and KL numerator
    (filled through a C-contiguous scratch: the adding kernels need one)."""
    import fastnmf._data as D
    monkeypatch.setattr(D, "PANEL_BYTES", 64)
    monkeypatch.setattr(D, "RANK_KERNEL_MIN_WORK", 0)
    A = make_csr(make_X(np.float64), np.int32, explicit_zeros=2)
    op = make_operator(check_X(A, 1.0))
    W = make_factor(M, np.float64, 10, guard_rows=True)
    Ht = make_factor(N, np.float64, 11, guard_rows=True)
    plain, strided = np.empty((N, R)), np.full((N, R + 3), np.nan)[:, :R]
    op.product("H", W, plain)
    op.product("H", W, strided)
    assert len(op.panels()) > 1 and np.array_equal(plain, strided)
    den = np.empty((1, R))
    op.beta_terms("H", Ht, W, 1.0, plain, den)
    op.beta_terms("H", Ht, W, 1.0, strided, den)
    assert np.array_equal(plain, strided)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_csr_operator_in_panels(dtype, monkeypatch):
    """X^T in 8-15 column panels: X^T W and the KL numerator of side H against the NumPy
    references, and every product, term and solver step bitwise the same at 1 and 2
    threads; the steps agree with the one-piece operator's to rounding (which, on a problem
    this small, runs the loop kernels)."""
    with numba_threads(1):
        A, W, Ht, one = _csr_steps_in_panels(dtype, monkeypatch)
    with numba_threads(2):
        _, _, _, two = _csr_steps_in_panels(dtype, monkeypatch)
    AT = csr_transpose(A, np.int32)
    assert_close(one[0], ref.product(AT, W), RTOL[dtype], "X^T W in panels")
    eps = wh_guard(np.dtype(dtype), 1.0)   # the operator's guard
    assert_close(one[1], ref.kl_numerator(AT, Ht, W, float(eps)), RTOL[dtype],
                 "KL numerator in panels")
    for k, (a, b) in enumerate(zip(one, two)):
        assert a.tobytes() == b.tobytes(), f"output #{k} differs between 1 and 2 threads"
    monkeypatch.undo()
    op = make_operator(check_X(A, 1.0))
    for k, (cls, beta) in enumerate(((MU, 1.0), (MU, 2.0), (HALS, 2.0))):
        s = cls(op, W.copy(), Ht.copy(), beta, Penalty(l1_W=0.5, l2_H=0.5))
        for _ in range(3):
            s.step(True)
        assert len(op.panels()) == 1
        assert_close(one[2 + 3 * k], s.W, RTOL_STEP[dtype], f"{cls.__name__} {beta} W")
        assert_close(one[3 + 3 * k], s.Ht, RTOL_STEP[dtype], f"{cls.__name__} {beta} Ht")


def test_thread_count_restored():
    before = numba.get_num_threads()
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


# ------------------------------------------------------------------------------------------
# float32 stays float32

KERNELS = {
    "csr_times_dense_loop": ks.csr_times_dense_loop,
    "csr_times_dense_fixed": ks.csr_times_dense_fixed,
    "csr_kl_numerator_loop": ks.csr_kl_numerator_loop,
    "csr_kl_numerator_fixed": ks.csr_kl_numerator_fixed,
    "csr_kl_loss_rows_fixed": ks.csr_kl_loss_rows_fixed,
    "csr_kl_loss_rows_loop": ks.csr_kl_loss_rows_loop,
    "csr_beta_tiles": ks.csr_beta_tiles,
    "dense_times": kd.dense_times,
    "dense_times_gt": kd.dense_times_gt,
    "dense_times_transposed": kd.dense_times_transposed,
    "dense_mu_frobenius_w": kd.dense_mu_frobenius_w,
    "dense_mu_beta_w": kd.dense_mu_beta_w,
    "sum_partials": kd.sum_partials,
    "dense_beta_blocks": kd.dense_beta_blocks,
    "mu_apply": kf.mu_apply,
    "mu_apply_shared": kf.mu_apply_shared,
    "column_sums": kf.column_sums,
    "gram": kf.gram,
    "mu_apply_gram_fixed": kf.mu_apply_gram_fixed,
    "mu_apply_gram_blocks": kf.mu_apply_gram_blocks,
    "hals_sweeps_lanes": kf.hals_sweeps_lanes,
    "hals_sweeps_loop": kf.hals_sweeps_loop,
}


def _widening_signatures():
    """Compiled signatures in which float32 arrays meet a float64 scalar (which would make
    the kernel compute in float64 and round back: silent widening)."""
    bad = []
    for name, kern in KERNELS.items():
        for sig in kern.signatures:
            arrays = [t for t in sig if isinstance(t, numba.types.Array)]
            has_f32 = any(t.dtype == numba.types.float32 for t in arrays)
            f64_scalars = [t for t in sig if t == numba.types.float64]
            if has_f32 and f64_scalars:
                bad.append(f"{name}{tuple(str(t) for t in sig)}")
    return bad


@pytest.mark.parametrize("fmt", ["dense", "csr-int32"])
def test_float32_stays_float32(fmt, kernel_rule):
    dtype = np.float32
    for beta in (2.0, 1.0, 0.5, 1.5, 3.0):
        Xin, Xv, W, Ht = solver_case(fmt, dtype, beta)
        if sp.issparse(Xv):
            assert Xv.dtype == np.float32
        else:
            assert Xv.dtype == np.float32 and Xv.flags.c_contiguous
        op = make_operator(Xv)
        assert op.dtype == np.float32
        for side, F, G in (("W", W, Ht), ("H", Ht, W)):
            out = op.product(side, G, np.empty_like(F))
            assert out.dtype == np.float32
            if beta != 2:
                num, den = np.empty_like(F), np.empty_like(F[:1] if beta == 1 else F)
                op.beta_terms(side, F, G, beta, num, den)
                assert num.dtype == np.float32 and den.dtype == np.float32
        loss = op.loss(W, Ht, beta)
        assert isinstance(loss, float) and np.isfinite(loss)
        cls = HALS if beta == 2 else MU
        for kw in ({}, PENALTIES["l1l2"]):
            s = cls(op, W.copy(), Ht.copy(), beta, Penalty(**kw))
            s.step(True)
            assert s.W.dtype == np.float32 and s.Ht.dtype == np.float32
    bad = _widening_signatures()
    assert not bad, "float32 kernels called with float64 scalars: " + "; ".join(bad)


# ------------------------------------------------------------------------------------------
# compilation

def _row_sum(A, out):
    for i in numba.prange(A.shape[0]):
        acc = A[i, 0] - A[i, 0]
        for k in range(A.shape[1]):
            acc += A[i, k]
        out[i] = acc


def _mnemonics(disp):
    """The multiset of instruction mnemonics of a dispatcher's only compiled signature."""
    import collections
    asm = disp.inspect_asm(disp.signatures[0])
    return collections.Counter(
        line.split()[0] for line in asm.splitlines()
        if line.startswith("\t") and not line.lstrip().startswith("."))


def test_interleave_option_is_scoped_to_the_compile(monkeypatch):
    """The forced interleave count is LLVM-global: it must be set only while a row kernel's
    second copy compiles and always reset to LLVM's default (0, automatic), also after a
    compile that fails, so other Numba code in the process compiles as usual. Checked on
    the generated code: the same function compiled before and after a forced compile is
    the same machine code, and the forced one differs."""
    from fastnmf import _jit
    if not _jit.CAN_SCOPE_INTERLEAVE:   # LLVM < 15: one copy, the option is never touched
        assert ks.csr_times_dense_loop.single is ks.csr_times_dense_loop.interleaved
        return
    opts = dict(parallel=True, nogil=True, error_model="numpy", fastmath=set(_jit.FASTMATH))
    A, out = np.ones((3, 21)), np.empty(3)
    before = numba.njit(**opts)(_row_sum)
    before(A, out)
    calls = []
    real = _jit.llvm.set_option
    monkeypatch.setattr(_jit.llvm, "set_option", lambda *a: (calls.append(a[1]), real(*a)))
    forced = _jit._InterleaveOneDispatcher(py_func=_row_sum, locals={},
                                           targetoptions=dict(nopython=True, **opts))
    forced(A, out)
    assert (out == 21).all()
    assert calls == ["-force-vector-interleave=1", "-force-vector-interleave=0"]
    calls.clear()
    with pytest.raises(numba.core.errors.TypingError):
        forced(A, "not an array")
    assert calls == ["-force-vector-interleave=1", "-force-vector-interleave=0"]
    after = numba.njit(**opts)(_row_sum)
    after(A, out)
    assert _mnemonics(after) == _mnemonics(before)
    assert _mnemonics(forced) != _mnemonics(before)


def _vector_registers(disp):
    """The vector register widths the arithmetic of a dispatcher's code uses (copies of
    small structs may use wider moves whatever the vectorizer's width)."""
    import re
    asm = disp.inspect_asm(disp.signatures[0])
    arith = re.compile(r"\tv(f?n?m?add|sub|mul|div|fmadd|fnmadd)\w*\s")
    return {reg for line in asm.splitlines() if arith.match(line)
            for reg in re.findall(r"%([xyz]mm)\d", line)}


def test_row_kernels_are_compiled_for_their_vector_width():
    """Every function compiled for a row kernel carries LLVM's prefer-vector-width attribute
    of its copy (256 bits; the narrow copy 128), its machine code uses no wider registers
    even on AVX-512 hosts, and the hook that adds the attribute exists only during that
    compile (also one that fails): a function compiled afterwards gets LLVM's own choice
    again, the same as before."""
    from numba.core.codegen import CPUCodeLibrary
    from fastnmf import _jit
    opts = dict(parallel=True, nogil=True, error_model="numpy", fastmath=set(_jit.FASTMATH))
    A, out = np.ones((5, 40)), np.empty(5)
    hook = CPUCodeLibrary.add_ir_module
    before = numba.njit(**opts)(_row_sum)
    before(A, out)
    for cls, bits, wider in ((_jit._RowDispatcher, 256, {"zmm"}),
                             (_jit._InterleaveOneDispatcher, 256, {"zmm"}),
                             (_jit._NarrowDispatcher, 128, {"ymm", "zmm"})):
        tagged = cls(py_func=_row_sum, locals={}, targetoptions=dict(nopython=True, **opts))
        tagged(A, out)
        assert (out == 40).all()
        ir = "".join(tagged.inspect_llvm().values())
        assert f'"prefer-vector-width"="{bits}"' in ir
        assert not wider & _vector_registers(tagged)
        if bits == 256:
            assert "ymm" in _vector_registers(tagged) or not _has_avx2()
        with pytest.raises(numba.core.errors.TypingError):
            tagged(A, "not an array")
        assert CPUCodeLibrary.add_ir_module is hook
    after = numba.njit(**opts)(_row_sum)
    after(A, out)
    assert "prefer-vector-width" not in "".join(after.inspect_llvm().values())
    assert _mnemonics(after) == _mnemonics(before)
    assert _vector_registers(after) == _vector_registers(before)


def _max_of_every_other(a):
    return np.max(a[::2])


def test_row_kernel_width_stays_off_helpers_compiled_on_the_side():
    """np.max of a strided uint16 array is compiled for the first time inside a row kernel's
    compile, and Numba keeps it for later compiles: only the kernel's own functions get
    the width attribute, so a plain function compiled later that uses np.max the same way
    gets none."""
    from fastnmf import _jit
    a = np.arange(1000, dtype=np.uint16)
    tagged = _jit._RowDispatcher(py_func=_max_of_every_other, locals={},
                                 targetoptions=dict(nopython=True))
    assert tagged(a) == 998
    assert '"prefer-vector-width"="256"' in "".join(tagged.inspect_llvm().values())
    plain = numba.njit(lambda x: np.max(x[::2]) + 1)
    assert plain(a) == 999
    assert "prefer-vector-width" not in "".join(plain.inspect_llvm().values())


def _has_avx2():
    import llvmlite.binding as llvm
    return "+avx2" in llvm.get_host_cpu_features().flatten()


def test_row_kernel_calls_the_copy_its_rows_select(monkeypatch):
    kern = ks.csr_times_dense_loop
    called = []
    for name in ("interleaved", "single", "narrow"):
        monkeypatch.setattr(kern, name, lambda *a, name=name: called.append(name))
    idx = np.zeros(1, np.int32)
    kern(idx, idx, np.zeros(0), np.zeros((2, 20)), np.zeros((1, 20)))
    kern(idx, idx, np.zeros(0), np.zeros((2, 32)), np.zeros((1, 32)))
    kern(idx, idx, np.zeros(0, np.float32), np.zeros((2, 12), np.float32),
         np.zeros((1, 12), np.float32))
    assert called == ["single", "interleaved", "narrow"]


@pytest.mark.parametrize("dtype,r,copy", [
    (np.float64, 20, "single"), (np.float64, 30, "single"), (np.float64, 12, "single"),
    (np.float64, 32, "interleaved"), (np.float64, 40, "interleaved"),
    (np.float64, 16, "single"), (np.float64, 24, "single"),
    (np.float64, 10, "narrow"), (np.float64, 1, "single"), (np.float64, 3, "narrow"),
    (np.float32, 24, "single"), (np.float32, 8, "single"), (np.float32, 26, "single"),
    (np.float32, 28, "narrow"), (np.float32, 20, "narrow"), (np.float32, 12, "narrow"),
    (np.float32, 32, "single"), (np.float32, 16, "single"), (np.float32, 64, "interleaved"),
    (np.float32, 36, "narrow"), (np.float32, 40, "single")])
def test_row_kernel_takes_the_copy_with_the_fewest_operations(dtype, r, copy):
    """Vector operations + 2 per scalar remainder element (32-byte vectors 4 float64 / 8
    float32 lanes, two or one per iteration; 16-byte vectors one per iteration), ties to the
    wider copy, and between the two 32-byte copies to the interleaved one only from four of
    its iterations up. E.g. float64 r = 20: 2 x 2 + 2 x 4 = 12, 5, 10 -> single; float64
    r = 10: 2 + 4, 2 + 4, 5 -> narrow; float32 r = 28: 2 + 24, 3 + 8, 7 -> narrow; float32
    r = 32: 4, 4 (two interleaved iterations), 8 -> single; float64 r = 32: 8, 8 (four), 16
    -> interleaved."""
    from fastnmf import _jit
    if not _jit.CAN_SCOPE_INTERLEAVE:
        pytest.skip("LLVM < 15: the row kernels are compiled once")
    rows = np.zeros((3, r), dtype=dtype)
    chosen = ks.csr_times_dense_loop.for_rows(rows)
    assert chosen is getattr(ks.csr_times_dense_loop, copy)
    # the copies are cached on disk like every other kernel, under their own names
    assert type(chosen._cache).__name__ == "FunctionCache"
    names = {c.py_func.__qualname__ for c in (ks.csr_times_dense_loop.interleaved,
                                               ks.csr_times_dense_loop.single,
                                               ks.csr_times_dense_loop.narrow)}
    assert len(names) == 3


def test_row_kernels_pickle_by_reference():
    import pickle
    for kern in (ks.csr_times_dense, ks.csr_times_dense_loop, ks.csr_times_dense_fixed,
                 ks.csr_kl_numerator, ks.csr_kl_numerator_loop, ks.csr_kl_numerator_fixed,
                 ks.csr_kl_loss_rows, ks.csr_kl_loss_rows_fixed, ks.csr_kl_loss_rows_loop,
                 kf.hals_sweeps, kf.hals_sweeps_lanes,
                 kf.hals_sweeps_loop):
        assert pickle.loads(pickle.dumps(kern)) is kern


def test_row_kernel_needs_a_factor_argument():
    for kern in (ks.csr_times_dense_loop, ks.csr_times_dense_fixed, ks.csr_kl_numerator_fixed):
        with pytest.raises(TypeError, match="2-D"):
            kern(np.zeros(2, np.int32))
