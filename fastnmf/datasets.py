"""Synthetic data with a known structure, for the demo, tests and benchmarks."""
import numpy as np
import scipy.sparse as sp

from ._init import make_rng


def make_sparse_counts(n_rows=20_000, n_cols=5_000, nnz=200_000, rank=20, exponent=1.0,
                       random_state=0, dtype=np.float64):
    """A sparse count matrix drawn from a planted rank-``rank`` Poisson model.

    Each count picks a topic k, then a row and a column from that topic's distributions;
    rows and columns have power-law popularity (Zipf weights with ``exponent``), as in text
    and single-cell data. Counts are drawn until about ``nnz`` distinct entries exist.
    Returns a CSR matrix (sorted, no duplicates) of ``dtype``.
    """
    rng = make_rng(random_state)
    row_pop = rng.permutation(1.0 / np.arange(1, n_rows + 1) ** exponent)
    col_pop = rng.permutation(1.0 / np.arange(1, n_cols + 1) ** exponent)
    # topic-specific preferences (sparse-ish Gamma loadings) times global popularity
    row_p = rng.gamma(0.3, 1.0, size=(rank, n_rows)) * row_pop
    col_p = rng.gamma(0.3, 1.0, size=(rank, n_cols)) * col_pop
    row_cdf = np.cumsum(row_p, axis=1)
    col_cdf = np.cumsum(col_p, axis=1)
    row_cdf /= row_cdf[:, -1:]
    col_cdf /= col_cdf[:, -1:]
    topic_w = rng.dirichlet(np.ones(rank))
    rows_all, cols_all = [], []
    X = sp.csr_matrix((n_rows, n_cols), dtype=np.float64)
    draws = int(nnz * 1.2)
    for _ in range(50):
        counts = rng.multinomial(draws, topic_w)
        for k in range(rank):
            c = counts[k]
            if c == 0:
                continue
            rows_all.append(np.searchsorted(row_cdf[k], rng.random(c), side="right")
                            .clip(0, n_rows - 1).astype(np.int32))
            cols_all.append(np.searchsorted(col_cdf[k], rng.random(c), side="right")
                            .clip(0, n_cols - 1).astype(np.int32))
        rows = np.concatenate(rows_all)
        cols = np.concatenate(cols_all)
        X = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_rows, n_cols))
        X.sum_duplicates()
        if X.nnz >= nnz:
            break
        draws = max(int((nnz - X.nnz) * 1.5 * rows.size / max(X.nnz, 1)), 1000)
    X.sort_indices()
    return X.astype(dtype)


def make_dense_images(n_rows=10_000, n_cols=784, rank=30, zero_fraction=0.5, random_state=0,
                      dtype=np.float64):
    """A dense non-negative matrix like flattened images: smooth non-negative parts mixed
    non-negatively, with about ``zero_fraction`` of the entries exactly zero."""
    rng = make_rng(random_state)
    side = int(np.ceil(np.sqrt(n_cols)))
    yy, xx = np.mgrid[0:side, 0:side] / side
    parts = np.empty((rank, n_cols))
    for k in range(rank):
        cx, cy, s = rng.random(), rng.random(), 0.05 + 0.15 * rng.random()
        parts[k] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)).ravel()[:n_cols]
    weights = rng.gamma(0.5, 1.0, size=(n_rows, rank))
    X = weights @ parts
    X -= np.quantile(X, zero_fraction)
    np.maximum(X, 0, out=X)
    X /= X.max()
    return np.ascontiguousarray(X, dtype=dtype)
