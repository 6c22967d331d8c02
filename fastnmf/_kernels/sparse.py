"""CSR kernels: sparse-dense products and the fused beta-divergence terms.

Threading contract (every kernel here but ``csr_beta_tiles``, which runs over fixed row
blocks and calls BLAS inside: see its docstring): the outer ``prange`` runs over contiguous ranges of
rows of the CSR matrix (``row_chunks``: about equal nonzeros + rows each, so power-law rows
do not leave a thread idle); a range's iteration reads shared inputs and writes only its own
rows of the outputs (and of ``loss_rows``), so there is no race and each row is computed by
exactly one thread in a fixed order: results do not depend on the thread count or on the
chunking. ``W.T @ X`` is computed by the same kernels on the CSR copy of ``X.T`` (never by
scattering into shared rows: measured slower, see docs/performance.md).

Shapes: ``indptr`` (m+1,), ``indices``/``data`` (nnz,), ``F`` (m, r), ``G`` (n, r) with
``F @ G.T`` the model of the m x n matrix. ``data``, ``F``, ``G`` and the outputs share one
float dtype; scalars ``eps``/exponents are passed in that dtype so float32 never widens.

Positions in the CSR arrays and gathered column indices are unsigned (``U``) inside the
gather loops. For a signed index Numba emits a negative-index wraparound (compare and select)
on every access, which LLVM cannot remove for values loaded from ``indptr``/``indices``; the
operators validate those arrays (0 <= index < n, indptr non-decreasing) before any kernel
runs (and the kernels are private), so the wraparound is never needed; an invalid negative
index would now read far out of bounds instead of wrapping, which is why that validation
must stay in front of every call. Where nothing else changed (float32 at r = 20, both dtypes
at r = 32; 2 threads, alternating-order A/B) the products became 1.13-1.25x and the KL
numerator 1.18-1.29x faster, the KL loss 0.93-1.09x; results bitwise identical.
"""
import math

import numpy as np
from numba import prange

from .._jit import inline_helper, parallel_kernel, rank_kernel, row_kernel
from ._fixed_rank import fits, gather_row_sum, kl_row_loss, kl_row_numerator
from ._prefetch import U, spills, take_four
from ._scalar import beta_divergence_entry, four_dots, guarded, row_dot
from ._vector_math import log4, power_in_place

N_CHUNKS = 256  # row ranges per call; static scheduling hands each thread ~N_CHUNKS/threads


@inline_helper
def row_chunks(indptr, n_chunks):
    """Boundaries (k+1,) of k <= n_chunks contiguous row ranges with about equal weight
    nnz(row) + 1 each (the + 1 keeps long runs of empty rows from piling onto one range)."""
    m = indptr.shape[0] - 1
    k = max(1, min(n_chunks, m))
    bounds = np.empty(k + 1, dtype=np.int64)
    total = np.int64(indptr[m]) + m
    bounds[0] = 0
    lo = 0
    for c in range(1, k):
        target = total * c // k
        hi = m
        while lo < hi:  # first row i with indptr[i] + i >= target
            mid = (lo + hi) // 2
            if np.int64(indptr[mid]) + mid < target:
                lo = mid + 1
            else:
                hi = mid
        bounds[c] = lo
    bounds[k] = m
    return bounds


@inline_helper
def four_values(data, p):
    """data[p .. p+3] (``p`` unsigned)."""
    return data[p], data[p + U(1)], data[p + U(2)], data[p + U(3)]


@inline_helper
def kl_ratio(x, wh, eps):
    """x / max(wh, eps) in float64, the argument of the KL term's log; 1 for x == 0, whose
    term x log(.) - x is then 0 (``kl_nonzero_term``, ``log4`` in the loss rows)."""
    if x == 0:
        return 1.0
    if wh < eps:
        wh = eps
    return np.float64(x) / np.float64(wh)   # float() keeps a float32 a float32 in Numba


@inline_helper
def kl_nonzero_term(x, wh, eps):
    """x log(x / max(wh, eps)) - x in float64 (0 for an explicitly stored zero): the part of
    d_KL(x | wh) = x log(x / wh) - x + wh that the sum of all of WH does not cover."""
    xf = np.float64(x)
    return xf * math.log(kl_ratio(xf, wh, eps)) - xf


def fixed_rank_rows(*rows):
    """Whether the fixed-rank kernels take these factor-row arrays: 2-D, C-contiguous, of
    one dtype, rows of at most ``_fixed_rank.MAX_ROW_BYTES``. Otherwise the loop kernels."""
    first = rows[0]
    return (all(getattr(a, "ndim", 0) == 2 and a.flags.c_contiguous and a.dtype == first.dtype
                and a.shape[1] == first.shape[1] for a in rows)
            and fits(first.shape[1], first.itemsize))


def csr_times_dense(indptr, indices, data, B, out, by_rank=True):
    """out = A @ B for CSR A (m x n) and dense B (n x r): ``csr_times_dense_fixed`` where
    ``fixed_rank_rows``, else ``csr_times_dense_loop``. ``by_rank`` False (a problem too
    small for a compile per rank: ``_data.RANK_KERNEL_MIN_WORK``) takes the loop kernel's
    copy shared by every rank (``_jit.RowKernel.shared``)."""
    if by_rank and fixed_rank_rows(B, out):
        return csr_times_dense_fixed(indptr, indices, data, B, out, False)
    return csr_times_dense_loop(indptr, indices, data, B, out, by_rank=by_rank)


@rank_kernel
def csr_times_dense_fixed(indptr, indices, data, B, out, add, rank):
    """out = A @ B (out += A @ B where ``add``) with r = ``rank`` fixed at compile time: each
    row's r sums stay in vector registers over all its nonzeros
    (``_fixed_rank.gather_row_sum``)."""
    nnz = U(indptr[indptr.shape[0] - 1])
    spill = spills(B, U(rank) * U(B.itemsize))
    bounds = row_chunks(indptr, N_CHUNKS)
    for c in prange(bounds.shape[0] - 1):
        for i in range(bounds[c], bounds[c + 1]):
            gather_row_sum(out, i, B, indices, data, U(indptr[i]), U(indptr[i + 1]), nnz,
                           spill, add, rank)


def csr_times_dense_add(indptr, indices, data, B, out):
    """out += A @ B by the fixed-rank kernel (the later column panels of ``CsrOperator``:
    only where ``fixed_rank_rows(B, out)``)."""
    return csr_times_dense_fixed(indptr, indices, data, B, out, True)


@row_kernel
def csr_times_dense_loop(indptr, indices, data, B, out):
    """out = A @ B for CSR A (m x n) and dense B (n x r), for any r and layout.

    Four nonzeros per update of out[i]: adding one scaled row at a time makes every nonzero
    wait for the previous read-modify-write of out[i] (a ~9-cycle chain per nonzero that
    bounded the kernel even with the gathered rows in L1); four at a time cut it to a quarter
    (1.1-1.5x on 2.24M nonzeros, r = 20 and 32, float32 and float64).

    The first four nonzeros of a row assign out[i] instead of adding to a zeroed row: LLVM
    turned the zeroing loop into a call to ``memset`` per row, and the first update's vector
    loads then waited on the call's stores (1.04-1.09x at r = 10 and 20, bitwise the same).
    A row with fewer than four nonzeros is zeroed from ``indptr[0]`` (0 in a valid CSR
    matrix, but not a constant LLVM can see, so no ``memset`` there either).
    """
    r = out.shape[1]
    zero = out.dtype.type(indptr[0])
    nnz = U(indptr[indptr.shape[0] - 1])
    bounds = row_chunks(indptr, N_CHUNKS)
    for c in prange(bounds.shape[0] - 1):
        for i in range(bounds[c], bounds[c + 1]):
            p = U(indptr[i])
            end = U(indptr[i + 1])
            if p + U(3) < end:
                j0, j1, j2, j3 = take_four(B, indices, p, nnz)
                x0, x1, x2, x3 = four_values(data, p)
                for k in range(r):
                    out[i, k] = (x0 * B[j0, k] + x1 * B[j1, k]) + (x2 * B[j2, k] + x3 * B[j3, k])
                p += U(4)
            else:
                for k in range(r):
                    out[i, k] = zero
            while p + U(3) < end:
                j0, j1, j2, j3 = take_four(B, indices, p, nnz)
                x0, x1, x2, x3 = four_values(data, p)
                for k in range(r):
                    out[i, k] += (x0 * B[j0, k] + x1 * B[j1, k]) + (x2 * B[j2, k] + x3 * B[j3, k])
                p += U(4)
            while p < end:
                j = U(indices[p])
                x = data[p]
                for k in range(r):
                    out[i, k] += x * B[j, k]
                p += U(1)


def csr_kl_numerator(indptr, indices, data, F, G, eps, out, by_rank=True):
    """out[i] = sum over nonzeros j of x_ij / max(F_i . G_j, eps) * G_j (the KL MU numerator):
    ``csr_kl_numerator_fixed`` where ``fixed_rank_rows``, else ``csr_kl_numerator_loop``
    (``by_rank`` as in ``csr_times_dense``)."""
    if by_rank and fixed_rank_rows(F, G, out):
        return csr_kl_numerator_fixed(indptr, indices, data, F, G, eps, out, False)
    return csr_kl_numerator_loop(indptr, indices, data, F, G, eps, out, by_rank=by_rank)


@rank_kernel
def csr_kl_numerator_fixed(indptr, indices, data, F, G, eps, out, add, rank):
    """The KL numerator (added to out where ``add``) with r = ``rank`` fixed at compile time:
    F_i and the row's r sums stay in registers, each gathered G_j is loaded once
    (``_fixed_rank.kl_row_numerator``)."""
    nnz = U(indptr[indptr.shape[0] - 1])
    spill = spills(G, U(rank) * U(G.itemsize))
    bounds = row_chunks(indptr, N_CHUNKS)
    for c in prange(bounds.shape[0] - 1):
        for i in range(bounds[c], bounds[c + 1]):
            kl_row_numerator(out, i, F, G, indices, data, U(indptr[i]), U(indptr[i + 1]), nnz,
                             spill, eps, add, rank)


def csr_kl_numerator_add(indptr, indices, data, F, G, eps, out):
    """out += the KL numerator by the fixed-rank kernel (the later column panels of
    ``CsrOperator``: only where ``fixed_rank_rows(F, G, out)``)."""
    return csr_kl_numerator_fixed(indptr, indices, data, F, G, eps, out, True)


@row_kernel
def csr_kl_numerator_loop(indptr, indices, data, F, G, eps, out):
    """The KL numerator for any r and layout.

    Four nonzeros at a time: their dot products are independent chains the CPU overlaps, and
    out[i] is read and written once per four (1.3-1.7x faster than one at a time). Each
    nonzero's value is the same; only the order of the additions into out[i] differs.
    """
    r = out.shape[1]
    zero = eps - eps
    nnz = U(indptr[indptr.shape[0] - 1])
    bounds = row_chunks(indptr, N_CHUNKS)
    for c in prange(bounds.shape[0] - 1):
        for i in range(bounds[c], bounds[c + 1]):
            for k in range(r):
                out[i, k] = zero
            p = U(indptr[i])
            end = U(indptr[i + 1])
            while p + U(3) < end:
                j0, j1, j2, j3 = take_four(G, indices, p, nnz)
                a0, a1, a2, a3 = four_dots(F, i, G, j0, j1, j2, j3, zero)
                v0 = data[p] / (a0 if a0 > eps else eps)
                v1 = data[p + U(1)] / (a1 if a1 > eps else eps)
                v2 = data[p + U(2)] / (a2 if a2 > eps else eps)
                v3 = data[p + U(3)] / (a3 if a3 > eps else eps)
                for k in range(r):
                    out[i, k] += (v0 * G[j0, k] + v1 * G[j1, k]) + (v2 * G[j2, k] + v3 * G[j3, k])
                p += U(4)
            while p < end:
                j = U(indices[p])
                wh = row_dot(F, i, G, j, zero)
                v = data[p] / (wh if wh > eps else eps)
                for k in range(r):
                    out[i, k] += v * G[j, k]
                p += U(1)


def csr_kl_loss_rows(indptr, indices, data, F, G, eps, loss_rows, by_rank=True):
    """loss_rows[i] = sum over nonzeros of x log(x / wh) - x, in float64:
    ``csr_kl_loss_rows_fixed`` where ``fixed_rank_rows``, else ``csr_kl_loss_rows_loop``
    (``by_rank`` as in ``csr_times_dense``)."""
    if by_rank and fixed_rank_rows(F, G):
        return csr_kl_loss_rows_fixed(indptr, indices, data, F, G, eps, loss_rows)
    return csr_kl_loss_rows_loop(indptr, indices, data, F, G, eps, loss_rows, by_rank=by_rank)


@rank_kernel
def csr_kl_loss_rows_fixed(indptr, indices, data, F, G, eps, loss_rows, rank):
    """The KL loss rows with r = ``rank`` fixed at compile time: F_i in registers, four
    nonzeros' dot products reduced together and their logarithms as one vector
    (``_fixed_rank.kl_row_loss``)."""
    nnz = U(indptr[indptr.shape[0] - 1])
    spill = spills(G, U(rank) * U(G.itemsize))
    bounds = row_chunks(indptr, N_CHUNKS)
    for c in prange(bounds.shape[0] - 1):
        for i in range(bounds[c], bounds[c + 1]):
            loss_rows[i] = kl_row_loss(i, F, G, indices, data, U(indptr[i]),
                                       U(indptr[i + 1]), nnz, spill, eps, rank)


@row_kernel
def csr_kl_loss_rows_loop(indptr, indices, data, F, G, eps, loss_rows):
    """loss_rows[i] = sum over nonzeros of x log(x / wh) - x, in float64.

    The sum over all entries of WH is added by the caller from column sums. Four nonzeros
    at a time with the rows of G prefetched, like the KL numerator: one dot product at a
    time left each nonzero waiting on its own reduction, and an evaluation of the loss cost
    as much as 1.2-1.7 KL iterations. Their four logarithms are one vector (``log4``):
    with the C library's scalar log the loss took 9.7 ms on the 50k problem (float64, 2
    threads), about 0.85 of a KL iteration.
    """
    zero = eps - eps
    nnz = U(indptr[indptr.shape[0] - 1])
    bounds = row_chunks(indptr, N_CHUNKS)
    for c in prange(bounds.shape[0] - 1):
        for i in range(bounds[c], bounds[c + 1]):
            acc = 0.0
            p = U(indptr[i])
            end = U(indptr[i + 1])
            while p + U(3) < end:
                j0, j1, j2, j3 = take_four(G, indices, p, nnz)
                a0, a1, a2, a3 = four_dots(F, i, G, j0, j1, j2, j3, zero)
                x0, x1 = np.float64(data[p]), np.float64(data[p + U(1)])
                x2, x3 = np.float64(data[p + U(2)]), np.float64(data[p + U(3)])
                l0, l1, l2, l3 = log4(kl_ratio(x0, a0, eps), kl_ratio(x1, a1, eps),
                                      kl_ratio(x2, a2, eps), kl_ratio(x3, a3, eps))
                acc += (((x0 * l0 - x0) + (x1 * l1 - x1))
                        + ((x2 * l2 - x2) + (x3 * l3 - x3)))
                p += U(4)
            while p < end:
                wh = row_dot(F, i, G, U(indices[p]), zero)
                acc += kl_nonzero_term(data[p], wh, eps)
                p += U(1)
            loss_rows[i] = acc


@parallel_kernel
def csr_beta_tiles(indptr, indices, data, F, G, beta, eps, num, den, loss_rows, want_terms,
                   want_loss, block, tile):
    """General beta on CSR: every entry (i, j), zeros of X included, in tiles of WH.

    With ``want_terms``:  num[i] = sum_j x_ij wh_ij^(beta-2) G_j   (nonzeros only),
                          den[i] = sum_j wh_ij^(beta-1) G_j        (all n entries).
    With ``want_loss``:   loss_rows[i] = sum_j d_beta(x_ij | wh_ij)  (float64).
    wh is guarded below by ``eps``; column indices sorted and duplicate-free (a kernel
    precondition: an unsorted row would read the wrong column).

    Per block of ``block`` rows and tile of ``tile`` columns: WH_t = F_b G_t^T by one GEMM,
    guarded. Terms: the nonzeros' wh are copied aside, WH_t is raised to beta - 1 in place
    by the vector power (``power_in_place``), den_b += WH_t G_t by a second GEMM, and each
    nonzero adds x wh^(beta-1) / wh G_j to num. Loss (beta > 0), with P = wh^(beta-1) in
    float64 (a powered float64 copy of the tile row): each nonzero adds its whole
    d_beta = (x^beta + ((beta-1) wh - beta x) P) / (beta (beta-1)) (KL's for beta = 1), so
    its terms cancel at its own scale, and its P is then zeroed; the zeros add
    sum wh P / beta over the tile (a vectorized loop); for
    beta <= 0 (validation allows it only without zeros in X) the nonzeros' d_beta, and +inf
    for a row with zeros. The tile keeps WH_t in L2 across these passes; the block
    amortizes the GEMMs' packing of G_t. 4 n r flops (terms; 2 n r for the loss) and n
    powers per row: the denominator and the zeros' loss have no closed form for a beta not
    in {1, 2}.

    Threading contract (not the module's ``row_chunks``): ``prange`` over fixed blocks of
    ``block`` rows (fixed by the shape, never by the thread count); a block writes only its
    rows of num, den and loss_rows, and its tile, partial, power and nonzero buffers are its
    own. Tiles run in order within a block and BLAS runs single-threaded inside (the fit
    limits it to one thread), so a row's result does not depend on the thread count.
    """
    m = F.shape[0]
    n, r = G.shape
    bf = np.float64(beta)
    bm1 = bf - 1.0
    split = want_loss and bf > 0.0
    for b in prange((m + block - 1) // block):
        s = b * block
        e = min(m, s + block)
        base = indptr[s]
        wh_nz = np.empty(indptr[e] - base if want_terms else 0, dtype=F.dtype)
        at = indptr[s:e].copy()          # each row's next nonzero, tile after tile
        partial = np.empty((e - s, r), dtype=F.dtype)
        buffer = np.empty((e - s) * min(n, tile), dtype=F.dtype)
        P = np.empty(min(n, tile) if split else 0)
        acc = np.zeros(e - s)
        if want_terms:
            num[s:e] = 0
            den[s:e] = 0
        for c0 in range(0, n, tile):
            c1 = min(n, c0 + tile)
            WH = buffer[:(e - s) * (c1 - c0)].reshape((e - s, c1 - c0))
            np.dot(F[s:e], G[c0:c1].T, WH)
            for ii in range(e - s):
                row = WH[ii]
                for j in range(c1 - c0):
                    row[j] = guarded(row[j], eps)
                first = at[ii]
                last = first
                while last < indptr[s + ii + 1] and indices[last] < c1:
                    last += 1
                at[ii] = last
                if split:
                    Pt = P[:c1 - c0]
                    for j in range(c1 - c0):
                        Pt[j] = row[j]
                    power_in_place(Pt, bm1)
                    for p in range(first, last):    # the whole d_beta, then out of the sum
                        jt = indices[p] - c0
                        wh = np.float64(row[jt])
                        if bm1 == 0.0:              # KL (P = 1)
                            acc[ii] += kl_nonzero_term(data[p], wh, eps) + wh
                        else:
                            x = np.float64(data[p])
                            acc[ii] += (x**bf + (bm1 * wh - bf * x) * Pt[jt]) / (bf * bm1)
                        Pt[jt] = 0.0
                    zeros_part = 0.0
                    for j in range(c1 - c0):
                        zeros_part += np.float64(row[j]) * Pt[j]
                    acc[ii] += zeros_part / bf
                elif want_loss:
                    for p in range(first, last):
                        acc[ii] += beta_divergence_entry(data[p], row[indices[p] - c0], bf)
                if want_terms:
                    for p in range(first, last):
                        wh_nz[p - base] = row[indices[p] - c0]
                    power_in_place(row, bm1)
                    for p in range(first, last):
                        j = indices[p]
                        c = data[p] * row[j - c0] / wh_nz[p - base]
                        for k in range(r):
                            num[s + ii, k] += c * G[j, k]
            if want_terms:
                np.dot(WH, G[c0:c1], partial)
                den[s:e] += partial
        if want_loss:
            for ii in range(e - s):
                if bf <= 0 and indptr[s + ii + 1] - indptr[s + ii] < n:
                    acc[ii] = math.inf
                loss_rows[s + ii] = acc[ii]
