import numpy as np
import pytest
import scipy.sparse as sp


def random_problem(m=40, n=30, r=4, density=0.3, seed=0, dtype=np.float64, positive=False):
    """A non-negative X near a planted rank-r model, with exact zeros unless ``positive``."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (m, r)) @ rng.gamma(1.0, 1.0, (r, n))
    X *= rng.gamma(2.0, 0.5, (m, n))
    if not positive:
        X[rng.random((m, n)) > density] = 0
        X[0] = 0          # an empty row
        X[:, 1] = 0       # an empty column
    return X.astype(dtype)


@pytest.fixture
def problem():
    return random_problem


def as_format(X, fmt):
    return sp.csr_matrix(X) if fmt == "csr" else np.array(X)


@pytest.fixture(params=["rank kernels", "shared kernels"])
def kernel_rule(request, monkeypatch):
    """Runs a test with the rank-specialized kernels and with the code shared by every rank.
    The rule that picks one (``fastnmf._data.RANK_KERNEL_MIN_WORK``) would give the small
    test problems the shared code only; here the limit is 0 or out of reach."""
    import fastnmf._data as D
    monkeypatch.setattr(D, "RANK_KERNEL_MIN_WORK",
                        0 if request.param == "rank kernels" else 1 << 62)
    return request.param
