"""Thread scaling, float32 vs float64, and a sparse iteration against its two bare products.

Run from the repository root (the tables in docs/performance.md come from this script):

    python benchmarks/scaling.py                 # 50k x 20k sparse problem, 1..cpu threads
    python benchmarks/scaling.py --quick         # small problem (seconds)
    python benchmarks/scaling.py --threads 1,2,4,8,16 --json out.json

Problem: ``make_sparse_counts(50_000, 20_000, 2_100_000, 20)`` (about 2.24M nonzeros), r = 20
(``--quick``: 5,000 x 2,000, 100k nonzeros), fixed random factors in [0, 1) scaled to the data.

Four tables, every number the median of ``--repeats`` interleaved repeats (each repeat
times every case once, in turn, so a burst of load on a shared machine hits all cases alike;
the cases compared with each other run in alternating order, see ``in_turn``):

1. Kernels vs threads: the CSR products ``X Ht`` and ``X^T W``, the fused KL numerator (both
   sides), the fused general-beta kernel (beta = 1.5, all m x n entries: on the first rows of X
   only, it is O(m n r)), the KL loss rows, the Frobenius MU update with its denominator, and 3
   HALS sweeps. Reported: ms per call per thread count, speedup over 1 thread, and GFLOP/s
   (and GB/s of compulsory traffic for the products) at the highest thread count.
2. One full iteration (``Solver.step``, no loss) of MU Frobenius, MU KL and HALS at each thread
   count, and its ratio to the two bare products ``X Ht`` + ``X^T W`` timed in the same repeat:
   the rest of an iteration is the Gram matrices, the factor updates and (HALS) the sweeps.
3. Where the time of a product goes (highest thread count): the real ``X Ht`` and ``X^T W``
   against the same kernel with every column index folded into a 64-row window of the factor
   (the gathered rows then sit in L1: streaming the CSR arrays plus the flops) and with r = 1
   (streaming the CSR arrays alone: the read bandwidth floor, in GB/s of the 12 bytes of value
   + int32 index per nonzero). The difference to the real kernel is the cost of gathering
   factor rows from L2/L3/DRAM.
4. float32 vs float64 at the highest thread count: seconds per iteration of each method, and the
   loss after ``--iters`` iterations from the same start (float64 start rounded to float32),
   both evaluated in float64 by fastnmf's loss, with their relative difference.

BLAS is held to one thread as during a fit; Numba's thread count is set per case.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

try:
    import fastnmf
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fastnmf
import numba
from threadpoolctl import threadpool_limits

from fastnmf._data import BETA_TILES, make_operator, wh_guard
from fastnmf._memory import aligned_copy
from fastnmf._kernels import factor as kf
from fastnmf._kernels import sparse as ks
from fastnmf.datasets import make_sparse_counts
from fastnmf.solvers import HALS, MU
from fastnmf.solvers._base import Penalty


def in_turn(items, repeat):
    """``items`` forward on even repeats and reversed on odd ones. A case timed right after
    another that touched the same arrays runs on caches that one warmed; with a fixed order
    the later case always gets that advantage (two identical kernels measured 1.10-1.15x
    apart that way), with the order alternating both get it equally often."""
    items = list(items)
    return items[::-1] if repeat % 2 else items


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def problem(quick, dtype):
    if quick:
        X = make_sparse_counts(5_000, 2_000, 100_000, 20, random_state=0)
    else:
        X = make_sparse_counts(50_000, 20_000, 2_100_000, 20, random_state=0)
    return X.astype(dtype)


def start(X, r, dtype, seed=0):
    """Random factors whose product has the mean of X (so MU steps stay well scaled)."""
    m, n = X.shape
    rng = np.random.default_rng(seed)
    scale = np.sqrt(float(X.sum(dtype=np.float64)) / (m * n) / r) * 2.0
    W = aligned_copy(rng.random((m, r)) * scale, dtype)    # placed as a fit places them
    Ht = aligned_copy(rng.random((n, r)) * scale, dtype)
    return W, Ht


def kernel_cases(X, op, W, Ht, all_entry_rows):
    """name -> (callable, flops per call, compulsory bytes per call or None)."""
    dtype = X.dtype
    T = dtype.type
    s, i = dtype.itemsize, X.indices.dtype.itemsize
    m, n = X.shape
    r = W.shape[1]
    nnz = X.nnz
    panels = op.panels(W)    # X^T as the fits keep it (in column panels where W is large)
    eps = wh_guard(dtype, 1.0)
    o_m, o_n = np.empty_like(W), np.empty_like(Ht)
    rows = np.empty(max(m, n))
    Xs = X[:all_entry_rows]
    Xs.sort_indices()
    Ws = np.ascontiguousarray(W[:all_entry_rows])
    num_s, den_s = np.empty_like(Ws), np.empty_like(Ws)
    gram = np.ascontiguousarray(Ht.T @ Ht)
    P = np.ascontiguousarray(W @ gram)          # num = F @ gram: MU ratio ~1, F stays bounded
    F_mu = W.copy()
    F0, F_h = W.copy(), W.copy()
    zero, one, tiny = T(0), T(1), T(np.sqrt(np.finfo(dtype).tiny))

    def hals3():
        np.copyto(F_h, F0)
        kf.hals_sweeps(F_h, P, gram, zero, 3, zero)

    prod_bytes = nnz * (s + i) + (m + n) * r * s
    return {
        "X Ht (csr_times_dense)": (
            lambda: ks.csr_times_dense(X.indptr, X.indices, X.data, Ht, o_m),
            2 * nnz * r, prod_bytes),
        f"X^T W (on X^T, {len(panels)} panel{'s' if len(panels) > 1 else ''})": (
            lambda: op.product("H", W, o_n), 2 * nnz * r, prod_bytes),
        "KL numerator, side W": (
            lambda: ks.csr_kl_numerator(X.indptr, X.indices, X.data, W, Ht, eps, o_m),
            4 * nnz * r, prod_bytes + m * r * s),
        "KL numerator, side H": (
            lambda: op._over_panels(W, ks.csr_kl_numerator, ks.csr_kl_numerator_add,
                                    (Ht, W, eps), o_n),   # as beta_terms runs it, less den
            4 * nnz * r, prod_bytes + n * r * s),
        "KL loss rows": (
            lambda: ks.csr_kl_loss_rows(X.indptr, X.indices, X.data, W, Ht, eps, rows),
            2 * nnz * r, None),
        f"beta=1.5 terms, all entries ({all_entry_rows} rows)": (
            lambda: ks.csr_beta_tiles(Xs.indptr, Xs.indices, Xs.data, Ws, Ht, T(1.5),
                                      wh_guard(dtype, 1.5), num_s, den_s, rows, True, False,
                                      *BETA_TILES),
            4 * all_entry_rows * n * r, None),
        "MU Frobenius update (mu_apply_gram)": (
            lambda: kf.mu_apply_gram(F_mu, P, gram, zero, zero, one, tiny),
            2 * m * r * r + 5 * m * r, 3 * m * r * s),
        "HALS, 3 sweeps (hals_sweeps)": (hals3, 3 * m * (2 * r * r + 4 * r), None),
    }


def solver_cases(op, W, Ht, threads):
    """(method, threads) -> a fresh solver from the same start."""
    cases = {}
    for t in threads:
        for name, cls, beta in (("MU Frobenius", MU, 2.0), ("MU KL", MU, 1.0),
                                ("HALS", HALS, 2.0)):
            cases[(name, t)] = cls(op, aligned_copy(W), aligned_copy(Ht), beta, Penalty())
    return cases


def med(values):
    return float(statistics.median(values))


def kernel_table(X, op, W, Ht, threads, repeats, all_entry_rows):
    cases = kernel_cases(X, op, W, Ht, all_entry_rows)
    times = {(k, t): [] for k in cases for t in threads}
    for k, (f, _, _) in cases.items():       # compile / warm every case at every count
        for t in threads:
            numba.set_num_threads(t)
            f()
    for rep in range(repeats):
        for k, (f, _, _) in cases.items():
            for t in in_turn(threads, rep):
                numba.set_num_threads(t)
                times[(k, t)].append(timed(f))
    out = []
    for k, (_, flops, nbytes) in cases.items():
        ms = {t: 1e3 * med(times[(k, t)]) for t in threads}
        top = threads[-1]
        out.append(dict(kernel=k, ms=ms, speedup={t: ms[threads[0]] / ms[t] for t in threads},
                        gflops=flops / ms[top] / 1e6,
                        gbs=(nbytes / ms[top] / 1e6) if nbytes else None))
    return out


def iteration_table(X, op, W, Ht, threads, repeats):
    cases = solver_cases(op, W, Ht, threads)
    o_m, o_n = np.empty_like(W), np.empty_like(Ht)
    prods = {t: [] for t in threads}
    times = {k: [] for k in cases}
    for (name, t), s in cases.items():
        numba.set_num_threads(t)
        s.step(False)
    for rep in range(repeats):
        for t in in_turn(threads, rep):
            numba.set_num_threads(t)
            prods[t].append(timed(lambda: op.product("W", Ht, o_m))
                            + timed(lambda: op.product("H", W, o_n)))
        for (name, t), s in in_turn(cases.items(), rep):
            numba.set_num_threads(t)
            times[(name, t)].append(timed(lambda: s.step(False)))
    out = []
    for name in ("MU Frobenius", "MU KL", "HALS"):
        ms = {t: 1e3 * med(times[(name, t)]) for t in threads}
        out.append(dict(method=name, ms=ms, speedup={t: ms[threads[0]] / ms[t] for t in threads},
                        products_ms={t: 1e3 * med(prods[t]) for t in threads},
                        vs_products={t: ms[t] / (1e3 * med(prods[t])) for t in threads}))
    return out


def floor_table(X, op, W, Ht, threads, repeats):
    numba.set_num_threads(threads[-1])
    cases = {}
    for label, A, B in (("X Ht", X, Ht), ("X^T W", op.XT, W)):
        folded = (A.indices % 64).astype(A.indices.dtype)
        out = np.empty((A.shape[0], B.shape[1]), dtype=B.dtype)
        out1 = np.empty((A.shape[0], 1), dtype=B.dtype)
        B1 = np.ascontiguousarray(B[:64, :1])
        cases[label] = [
            ("real", lambda A=A, B=B, o=out: ks.csr_times_dense(A.indptr, A.indices, A.data,
                                                                  B, o)),
            ("L1 gathers", lambda A=A, f=folded, B=B, o=out: ks.csr_times_dense(
                A.indptr, f, A.data, B, o)),
            ("CSR stream (r=1)", lambda A=A, f=folded, B=B1, o=out1: ks.csr_times_dense(
                A.indptr, f, A.data, B, o)),
        ]
    times = {(lab, k): [] for lab, cs in cases.items() for k, _ in cs}
    for lab, cs in cases.items():
        for k, f in cs:
            f()
    for rep in range(repeats):
        for lab, cs in cases.items():
            for k, f in in_turn(cs, rep):
                times[(lab, k)].append(timed(f))
    nnz = X.nnz
    stream_bytes = nnz * (X.data.itemsize + X.indices.itemsize) + X.indptr.nbytes
    out = []
    for lab, cs in cases.items():
        ms = {k: 1e3 * med(times[(lab, k)]) for k, _ in cs}
        out.append(dict(product=lab, ms=ms,
                        stream_gbs=stream_bytes / ms["CSR stream (r=1)"] / 1e6,
                        l1_gflops=2 * nnz * W.shape[1] / ms["L1 gathers"] / 1e6,
                        real_gflops=2 * nnz * W.shape[1] / ms["real"] / 1e6,
                        gather_share=(ms["real"] - ms["L1 gathers"]) / ms["real"]))
    return out


def precision_table(quick, threads, repeats, n_iter):
    t = threads[-1]
    numba.set_num_threads(t)
    res = {}
    X64 = problem(quick, np.float64)
    W64, Ht64 = start(X64, 20, np.float64)
    for dtype in (np.float64, np.float32):
        X = X64.astype(dtype)
        op = make_operator(X)
        res[np.dtype(dtype).name] = dict(op=op, W=aligned_copy(W64, dtype),
                                         Ht=aligned_copy(Ht64, dtype))
    out = []
    for name, cls, beta in (("MU Frobenius", MU, 2.0), ("MU KL", MU, 1.0), ("HALS", HALS, 2.0)):
        solvers = {d: cls(v["op"], aligned_copy(v["W"]), aligned_copy(v["Ht"]), beta, Penalty())
                   for d, v in res.items()}
        times = {d: [] for d in solvers}
        for s in solvers.values():
            s.step(False)
        for rep in range(repeats):
            for d, s in in_turn(solvers.items(), rep):
                times[d].append(timed(lambda: s.step(False)))
        # loss after n_iter iterations from the same start, in float64
        losses = {}
        for d, v in res.items():
            s = cls(v["op"], aligned_copy(v["W"]), aligned_copy(v["Ht"]), beta, Penalty())
            for _ in range(n_iter):
                s.step(False)
            losses[d] = s.objective()
        ms = {d: 1e3 * med(v) for d, v in times.items()}
        out.append(dict(method=name, ms=ms, speedup=ms["float64"] / ms["float32"],
                        loss=losses, n_iter=n_iter,
                        rel_diff=abs(losses["float32"] - losses["float64"]) / losses["float64"]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default 1..cpu count, doubling)")
    p.add_argument("--repeats", type=int, default=None, help="default 15 (--quick 3)")
    p.add_argument("--iters", type=int, default=30, help="iterations for the float32 loss check")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.threads:
        threads = [int(x) for x in args.threads.split(",")]
    else:
        threads, t = [], 1
        while t <= os.cpu_count():
            threads.append(t)
            t *= 2
    threads = [t for t in threads if t <= numba.config.NUMBA_NUM_THREADS]
    repeats = args.repeats or (3 if args.quick else 15)
    all_entry_rows = 200 if args.quick else 1000
    threadpool_limits(1)          # BLAS single-threaded, as during a fit
    load0 = os.getloadavg()
    print(f"# fastnmf scaling: {platform.machine()}, {os.cpu_count()} CPUs, numba "
          f"{numba.__version__} ({numba.threading_layer() if False else 'threads'} {threads}), "
          f"numpy {np.__version__}; load average {load0[0]:.2f}; repeats {repeats}")
    X = problem(args.quick, np.float64)
    r = 20
    op = make_operator(X)
    W, Ht = start(X, r, np.float64)
    print(f"problem: {X.shape[0]} x {X.shape[1]}, nnz {X.nnz}, r {r}, float64\n")

    kt = kernel_table(X, op, W, Ht, threads, repeats, all_entry_rows)
    head = " | ".join(f"{t} thr ms" for t in threads)
    print(f"| kernel | {head} | speedup {threads[0]}->{threads[-1]} | GFLOP/s | GB/s |")
    print("|---|" + "---:|" * (len(threads) + 3))
    for row in kt:
        cells = " | ".join(f"{row['ms'][t]:.2f}" for t in threads)
        gbs = f"{row['gbs']:.1f}" if row["gbs"] else ""
        print(f"| {row['kernel']} | {cells} | {row['speedup'][threads[-1]]:.2f}x "
              f"| {row['gflops']:.1f} | {gbs} |")

    it = iteration_table(X, op, W, Ht, threads, repeats)
    print(f"\n| iteration | {head} | speedup {threads[0]}->{threads[-1]} | "
          + " | ".join(f"/ products at {t} thr" for t in threads) + " |")
    print("|---|" + "---:|" * (2 * len(threads) + 1))
    for row in it:
        cells = " | ".join(f"{row['ms'][t]:.2f}" for t in threads)
        ratios = " | ".join(f"{row['vs_products'][t]:.2f}x ({row['products_ms'][t]:.1f} ms)"
                            for t in threads)
        print(f"| {row['method']} | {cells} | {row['speedup'][threads[-1]]:.2f}x | {ratios} |")

    ft = floor_table(X, op, W, Ht, threads, repeats)
    print(f"\n| {threads[-1]} threads | real ms | L1-gather ms | CSR-stream ms | CSR read GB/s | "
          "GFLOP/s with L1 gathers | GFLOP/s real | share of time in gathers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in ft:
        ms = row["ms"]
        print(f"| {row['product']} | {ms['real']:.2f} | {ms['L1 gathers']:.2f} | "
              f"{ms['CSR stream (r=1)']:.2f} | {row['stream_gbs']:.1f} | {row['l1_gflops']:.1f} "
              f"| {row['real_gflops']:.1f} | {row['gather_share']:.0%} |")

    pt = precision_table(args.quick, threads, repeats, args.iters)
    print(f"\n| {threads[-1]} threads | float64 ms/it | float32 ms/it | float32 speedup | "
          f"loss after {args.iters} it, float64 | float32 | rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in pt:
        print(f"| {row['method']} | {row['ms']['float64']:.2f} | {row['ms']['float32']:.2f} | "
              f"{row['speedup']:.2f}x | {row['loss']['float64']:.7g} | "
              f"{row['loss']['float32']:.7g} | {row['rel_diff']:.1e} |")
    load1 = os.getloadavg()
    print(f"\nload average at the start {load0[0]:.2f}, at the end {load1[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(threads=threads, repeats=repeats, quick=args.quick,
                           shape=list(X.shape), nnz=int(X.nnz), kernels=kt, iterations=it,
                           floor=ft, precision=pt, loadavg=[load0[0], load1[0]],
                           cpu_count=os.cpu_count(), machine=platform.machine()),
                      fh, indent=2, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
