"""Factor updates given the products: the multiplicative step and the HALS sweep.

Every update writes 0 instead of a subnormal value (below the dtype's smallest normal
number, 1.2e-38 in float32). MU shrinks unused entries geometrically: on the 50k x 20k
benchmark problem float32 W had 9 subnormal entries after 10 iterations and 21,205 after
60, and arithmetic on subnormals is up to ~100x slower on x86, so a float32 fit got slower
than a float64 one. A subnormal entry contributes nothing representable to W H.

Threading contract: ``prange`` over rows i of F; iteration i reads the shared (read-only)
num/den/P/Q and writes only row i of F. A row of F depends on no other row, so there is no
race and the result does not depend on the thread count. ``hals_sweeps_lanes`` and the
blocked MU step run ``prange`` over fixed blocks of rows instead, each writing only its own.
"""
import numpy as np
from numba import prange

from .._jit import WIDE_REGISTERS, inline_helper, parallel_kernel, rank_kernel, row_kernel
from ._fixed_rank import (LANE_BYTES, MU_ROW_MAX_RANK, hals_lane_sweep, lanes_in, lanes_out,
                          mu_gram_row)
from ._scalar import eight_dots, four_dots, row_dot


@inline_helper
def mu_entry(f, num, den, l1, l2, gamma, tiny, normal):
    """One entry of the MU step: f * (num / max(den + l1 + l2 f, tiny)) ** gamma, stored as 0
    below ``normal`` (the smallest normal number; a NaN stays NaN)."""
    d = den + l1 + l2 * f
    if d < tiny:
        d = tiny
    ratio = num / d
    if gamma != 1:
        ratio = ratio**gamma
    v = f * ratio
    if v < normal:
        v = f - f
    return v


@parallel_kernel
def mu_apply(F, num, den, l1, l2, gamma, tiny):
    """F <- F * (num / max(den + l1 + l2 F, tiny)) ** gamma   (in place)."""
    m, r = F.shape
    normal = np.finfo(F.dtype).tiny
    for i in prange(m):
        for k in range(r):
            F[i, k] = mu_entry(F[i, k], num[i, k], den[i, k], l1, l2, gamma, tiny, normal)


@parallel_kernel
def mu_apply_shared(F, num, den, l1, l2, gamma, tiny):
    """``mu_apply`` with one denominator row den[0] (den is 1 x r) for every row of F: the KL
    step, whose denominator is the column sums of the other factor (an m x r copy of them,
    as NumPy broadcast it, took 0.3-0.5 ms to write per side on the 50k problem, and as long
    again to read back)."""
    m, r = F.shape
    normal = np.finfo(F.dtype).tiny
    for i in prange(m):
        for k in range(r):
            F[i, k] = mu_entry(F[i, k], num[i, k], den[0, k], l1, l2, gamma, tiny, normal)


GRAM_BLOCKS = 16      # most row blocks of gram(); fixed, so the sum does not depend on threads
GRAM_MIN_ROWS = 256   # fewest rows per block


@inline_helper
def gram_blocks(m):
    """(rows per block, blocks) of ``gram`` and ``column_sums`` for m rows: fixed by m
    alone, so their sums in block order do not depend on the thread count."""
    block = max(GRAM_MIN_ROWS, (m + GRAM_BLOCKS - 1) // GRAM_BLOCKS)
    return block, max(1, (m + block - 1) // block)


@parallel_kernel
def gram(G, out):
    """out = G^T G (r x r) for an m x r factor: partial Gram matrices of up to GRAM_BLOCKS
    row blocks (one single-threaded GEMM each) in parallel, summed in block order.

    The fit holds BLAS to one thread (see docs/architecture.md), and one BLAS call took
    1.42 ms for 50,000 x 20 float64 on the Zen 4 host; the blocks at 2 threads 0.73 ms
    (20,000 x 20: 0.51 -> 0.15 ms; 300,000 x 32: 18.7 -> 10.1 ms; float32 50,000 x 20:
    0.65 -> 0.57 ms). On the earlier AVX2 host the same split had measured 0.62-1.10x.
    Block b writes only its own r x r partial; the sum is serial (r^2 GRAM_BLOCKS additions).
    """
    m, r = G.shape
    block, nb = gram_blocks(m)
    parts = np.empty((nb, r, r), dtype=G.dtype)
    for b in prange(nb):
        s = min(m, b * block)
        e = min(m, s + block)
        Gb = G[s:e]
        np.dot(Gb.T, Gb, parts[b])
    for i in range(r):
        for j in range(r):
            acc = parts[0, i, j]
            for b in range(1, nb):
                acc += parts[b, i, j]
            out[i, j] = acc


@parallel_kernel
def column_sums(G, out):
    """out[k] = sum over the rows i of G[i, k], for an m x r factor: float64 partial sums of
    the row blocks of ``gram`` in parallel, added in block order, rounded once to out's
    dtype (the result does not depend on the thread count). NumPy's G.sum(axis=0) walks
    the columns of a C-contiguous G one at a time: 0.9 ms for 50,000 x 20 here."""
    m, r = G.shape
    block, nb = gram_blocks(m)
    parts = np.zeros((nb, r))
    for b in prange(nb):
        acc = np.zeros(r)
        for i in range(min(m, b * block), min(m, b * block + block)):
            for k in range(r):
                acc[k] += G[i, k]
        parts[b] = acc
    for k in range(r):
        total = 0.0
        for b in range(nb):
            total += parts[b, k]
        out[k] = total


MU_BLOCK = 64  # rows per task of mu_apply_gram: one small GEMM each


def mu_apply_gram(F, num, gram, l1, l2, gamma, tiny, by_rank=True):
    """The Frobenius MU step F_i <- F_i * (num_i / max(F_i @ gram + l1 + l2 F_i, tiny)) **
    gamma: ``mu_apply_gram_fixed`` (the denominator per row, r fixed at compile time) for
    gamma = 1 and C-contiguous arrays of one dtype up to ``_fixed_rank.MU_ROW_MAX_RANK``,
    else ``mu_apply_gram_blocks`` (one GEMM per 64-row block), which ``by_rank`` False
    (a problem too small for a compile per rank: ``_data.RANK_KERNEL_MIN_WORK``) always
    takes."""
    r = F.shape[1]
    if (by_rank and gamma == 1 and r <= MU_ROW_MAX_RANK.get(F.itemsize, 0)
            and all(a.flags.c_contiguous and a.dtype == F.dtype for a in (F, num, gram))):
        return mu_apply_gram_fixed(F, num, gram, l1, l2, tiny)
    return mu_apply_gram_blocks(F, num, gram, l1, l2, gamma, tiny)


@rank_kernel
def mu_apply_gram_fixed(F, num, gram, l1, l2, tiny, rank):
    """The Frobenius MU step (gamma = 1) with r = ``rank`` fixed at compile time: each row's
    denominator F_i @ gram from gram's rows (in L1), in vector registers
    (``_fixed_rank.mu_gram_row``). ``prange`` over fixed 64-row blocks."""
    normal = np.finfo(F.dtype).tiny
    m = F.shape[0]
    for b in prange((m + MU_BLOCK - 1) // MU_BLOCK):
        for i in range(b * MU_BLOCK, min(m, b * MU_BLOCK + MU_BLOCK)):
            mu_gram_row(F, i, num, gram, l1, l2, tiny, normal, rank)


@parallel_kernel
def mu_apply_gram_blocks(F, num, gram, l1, l2, gamma, tiny):
    """The Frobenius MU step with its denominator made per block: den_b = F_b @ gram
    (gram = G^T G, r x r), then F_i <- F_i * (num_i / max(den_i + l1 + l2 F_i, tiny)) ** gamma.

    Same step as ``mu_apply(F, num, F @ gram, ...)`` without the m x r ``den`` array, and with
    the r^2 flops per row spread over the threads (one single-threaded GEMM with r columns
    over all of F took 3.7 ms for 50,000 x 20 here; 64-row GEMMs in parallel plus the update:
    1.8 ms). A block reads and writes only its own rows of F: ``prange`` over blocks.
    """
    m, r = F.shape
    normal = np.finfo(F.dtype).tiny
    for b in prange((m + MU_BLOCK - 1) // MU_BLOCK):
        s = b * MU_BLOCK
        e = min(m, s + MU_BLOCK)
        den = np.dot(F[s:e], gram)
        for i in range(s, e):
            for k in range(r):
                F[i, k] = mu_entry(F[i, k], num[i, k], den[i - s, k], l1, l2, gamma, tiny,
                                   normal)


ROW_GROUP = 8  # rows swept together: their dependency chains overlap in the CPU


@inline_helper
def coordinate_step(F, P, i, k, l1, qkk, dot, normal, zero):
    """F_ik <- max(F_ik + (P_ik - l1 - dot) / Q_kk, 0) (0 below ``normal``), with dot =
    F_i . Q_k made before the update; returns the squared change."""
    s = (P[i, k] - l1) - dot
    old = F[i, k]
    new = old + s / qkk
    if new < normal:
        new = zero
    F[i, k] = new
    return (new - old) * (new - old)


# the lane kernel beats the loop kernel up to these ranks (itemsize -> r; see
# hals_sweeps_lanes): with 16 vector registers a group's r rows spill sooner
HALS_LANE_MAX_RANK = {8: 48, 4: 56} if WIDE_REGISTERS else {8: 24, 4: 48}
GROUPS_PER_TASK = 16   # lane groups per task of hals_sweeps_lanes: one set of buffers each


@inline_helper
def rows_still_active(active, change, first, size, t, delta_sq):
    """The stopping rule of both sweep kernels, after sweep t of a group's first ``size``
    rows: sweep 0's squared change of an active row is its ``first``; a later sweep whose
    change is <= delta_sq * first stops the row. Whether any row is still active."""
    still = False
    for ii in range(size):
        if active[ii]:
            if t == 0:
                first[ii] = change[ii]
            elif change[ii] <= delta_sq * first[ii]:
                active[ii] = False
            still = still or active[ii]
    return still


def hals_sweeps(F, P, Q, l1, max_sweeps, delta_sq, by_rank=True):
    """Repeated HALS sweeps over the rows of F (see ``hals_sweeps_loop``): by
    ``hals_sweeps_lanes`` for C-contiguous arrays of one dtype up to r =
    ``HALS_LANE_MAX_RANK``, else by the loop kernel; ``by_rank`` False (as in
    ``mu_apply_gram``): by the loop kernel's copy shared by every rank."""
    r = F.shape[1]
    T = F.dtype.type     # the scalars in F's dtype: a float32 sweep stays float32
    if by_rank and 1 <= r <= HALS_LANE_MAX_RANK.get(F.itemsize, 0) and all(
            a.flags.c_contiguous and a.dtype == F.dtype for a in (F, P, Q)):
        return hals_sweeps_lanes(F, P, Q, T(l1), max_sweeps, T(delta_sq))
    return hals_sweeps_loop(F, P, Q, T(l1), max_sweeps, T(delta_sq), by_rank=by_rank)


@rank_kernel
def hals_sweeps_lanes(F, P, Q, l1, max_sweeps, delta_sq, rank):
    """``hals_sweeps_loop``'s sweeps and stopping rule, L = LANE_BYTES / itemsize rows at a
    time (8 float64, 16 float32), one per vector lane (``_fixed_rank.hals_lane_sweep``, the
    rank fixed): the group is moved in transposed (with P - l1) by L x L shuffles
    (``lanes_in``), swept until none of its rows is still active, and moved back
    (``lanes_out``); a part group at the end goes through zero-padded copies. A row that
    has stopped keeps its value through the group's later sweeps. No sweep needs a
    horizontal sum, and float32 sweeps twice the rows per instruction.

    Each lane computes its own row alone, so the result depends neither on the thread count
    nor on the other rows. ``prange`` over tasks of GROUPS_PER_TASK groups (one set of small
    buffers per task); a group writes only its own rows of F.

    Against the loop kernel on the Zen 4 host (AVX-512; 50,000 rows, 3 sweeps, 2 threads,
    same process, alternating order): float64 r = 5-16 2.1-2.3x, r = 20 1.6-1.8x, r = 24-32
    1.2-1.7x, r = 36-56 1.1-1.3x, r = 64 0.86x; float32 r = 5-16 3.0-4.6x, r = 20-32
    2.2-3.4x, r = 36-48 1.7-2.2x, r = 56 1.58x, r = 64 1.21x. Code for AVX2 (16 vector
    registers; LLVM told the CPU is a Haswell, same host): float64 r = 10 1.93x, r = 20-24
    1.10-1.25x, r = 28-48 0.87-0.99x; float32 r = 10-24 2.1-4.0x, r = 40 1.49x, r = 48
    1.28x. Hence ``HALS_LANE_MAX_RANK``. The sweep runs at about 2.3 vector multiply-adds
    per ns (one thread, rows in L2, r = 20-32). The straight-line sweep of r^2 multiply-adds
    takes LLVM a while: a first call at a new rank compiles in 2.4 s at r = 12 (the loop
    kernel 3.9 s), 8-9 s at r = 48, 12-13 s at r = 56 (once per machine: cached on disk).
    """
    m = F.shape[0]
    width = LANE_BYTES // F.itemsize
    normal = np.finfo(F.dtype).tiny
    groups = (m + width - 1) // width
    for task in prange((groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK):
        Ft = np.zeros((rank, width), dtype=F.dtype)
        Pt = np.zeros((rank, width), dtype=F.dtype)
        active = np.zeros(width, dtype=np.bool_)
        change = np.zeros(width, dtype=F.dtype)
        first = np.zeros(width, dtype=F.dtype)
        for g in range(task * GROUPS_PER_TASK, min(groups, task * GROUPS_PER_TASK
                                                   + GROUPS_PER_TASK)):
            s0 = g * width
            size = min(m, s0 + width) - s0
            if size == width:
                lanes_in(Ft, Pt, F, P, s0, l1, rank)
            else:                           # the last rows, zero-padded to a whole group
                F_pad = np.zeros((width, rank), dtype=F.dtype)
                P_pad = np.zeros((width, rank), dtype=F.dtype)
                for ll in range(size):
                    for q in range(rank):
                        F_pad[ll, q] = F[s0 + ll, q]
                        P_pad[ll, q] = P[s0 + ll, q]
                lanes_in(Ft, Pt, F_pad, P_pad, 0, l1, rank)
            for ll in range(width):
                active[ll] = ll < size
            for t in range(max_sweeps):
                hals_lane_sweep(Ft, Pt, Q, active, change, normal, rank)
                if not rows_still_active(active, change, first, size, t, delta_sq):
                    break
            if size == width:
                lanes_out(F, s0, Ft, rank)
            else:
                lanes_out(F_pad, 0, Ft, rank)
                for ll in range(size):
                    for q in range(rank):
                        F[s0 + ll, q] = F_pad[ll, q]


@row_kernel
def hals_sweeps_loop(F, P, Q, l1, max_sweeps, delta_sq):
    """Coordinate descent on the rows of F for  min 0.5 f Q f^T - (P_i - l1) . f,  f >= 0.

    ``Q`` is G^T G (symmetric) with the L2 weight already on its diagonal, ``P`` = A G. Each
    row repeats its sweep over the r coordinates (Gillis & Glineur 2012) until the squared
    change of a sweep falls below ``delta_sq`` times that of its first sweep, at most
    ``max_sweeps`` times. Coordinates with Q_kk below the smallest normal number (an all-zero
    column of G, or one whose squared norm underflows) are left alone.

    A coordinate update is a short dot product followed by a division, and the next
    coordinate of the same row waits for it: a latency chain. Sweeping ROW_GROUP rows
    coordinate by coordinate interleaves independent chains (1.5-2x faster at r = 20-30).
    Rows that are still active take their dot products with Q's row k in one shared loop,
    each Q_kq loaded once, with independent sums: all eight rows of a full group while all
    are active, else four consecutive active rows, else a row on its own (quads 1.14-1.44x
    on the sweeps against one row at a time, r = 10-32, both dtypes; the whole group another
    1.0-1.33x). Each row still sees exactly its own sequence of updates and its own stopping
    rule; the loops can round a dot product differently, so a row's last bits depend on
    which of its group's rows are still active, which the data and the fixed groups decide:
    the result does not depend on the thread count. ``prange`` runs over the fixed groups; a
    group writes only its own rows of F.
    """
    m, r = F.shape
    zero = l1 - l1
    normal = np.finfo(F.dtype).tiny
    for b in prange((m + ROW_GROUP - 1) // ROW_GROUP):
        s0 = b * ROW_GROUP
        size = min(m, s0 + ROW_GROUP) - s0
        first = np.zeros(ROW_GROUP, dtype=F.dtype)
        change = np.zeros(ROW_GROUP, dtype=F.dtype)
        active = np.zeros(ROW_GROUP, dtype=np.bool_)
        active[:size] = True
        for t in range(max_sweeps):
            change[:] = zero
            whole = size == ROW_GROUP   # every row of a full group still active?
            for ii in range(size):
                whole = whole and active[ii]
            for k in range(r):
                qkk = Q[k, k]
                if qkk < normal:    # 1 / Q_kk would overflow; a NaN goes on (and shows)
                    continue
                if whole:   # all eight rows' dot products in one pass over Q's row k
                    i = s0
                    d0, d1, d2, d3, d4, d5, d6, d7 = eight_dots(Q, k, F, i, zero)
                    change[0] += coordinate_step(F, P, i, k, l1, qkk, d0, normal, zero)
                    change[1] += coordinate_step(F, P, i + 1, k, l1, qkk, d1, normal, zero)
                    change[2] += coordinate_step(F, P, i + 2, k, l1, qkk, d2, normal, zero)
                    change[3] += coordinate_step(F, P, i + 3, k, l1, qkk, d3, normal, zero)
                    change[4] += coordinate_step(F, P, i + 4, k, l1, qkk, d4, normal, zero)
                    change[5] += coordinate_step(F, P, i + 5, k, l1, qkk, d5, normal, zero)
                    change[6] += coordinate_step(F, P, i + 6, k, l1, qkk, d6, normal, zero)
                    change[7] += coordinate_step(F, P, i + 7, k, l1, qkk, d7, normal, zero)
                    continue
                ii = 0
                while ii < size:
                    i = s0 + ii
                    if (ii + 3 < size and active[ii] and active[ii + 1] and active[ii + 2]
                            and active[ii + 3]):
                        # Q is symmetric: its row k is column k, contiguous
                        d0, d1, d2, d3 = four_dots(Q, k, F, i, i + 1, i + 2, i + 3, zero)
                        change[ii] += coordinate_step(F, P, i, k, l1, qkk, d0, normal, zero)
                        change[ii + 1] += coordinate_step(F, P, i + 1, k, l1, qkk, d1, normal,
                                                          zero)
                        change[ii + 2] += coordinate_step(F, P, i + 2, k, l1, qkk, d2, normal,
                                                          zero)
                        change[ii + 3] += coordinate_step(F, P, i + 3, k, l1, qkk, d3, normal,
                                                          zero)
                        ii += 4
                    else:
                        if active[ii]:
                            d = row_dot(Q, k, F, i, zero)
                            change[ii] += coordinate_step(F, P, i, k, l1, qkk, d, normal, zero)
                        ii += 1
            if not rows_still_active(active, change, first, size, t, delta_sq):
                break
