"""fastnmf vs scikit-learn's NMF: seconds per iteration and loss after the same iterations.

Run from the repository root:

    python benchmarks/compare_sklearn.py            # full size (a few minutes)
    python benchmarks/compare_sklearn.py --quick    # small problems (seconds)
    python benchmarks/compare_sklearn.py --json out.json
    python benchmarks/compare_sklearn.py --problems sparse-large   # 300k x 50k, 5.5M nnz
    python benchmarks/compare_sklearn.py --problems sparse --time-to-cd 100 --no-pairs

Problems
--------
- sparse: ``make_sparse_counts(50_000, 20_000, 2_100_000, 20)`` (about 2.2M nonzeros), r = 20
- dense:  ``make_dense_images(10_000, 784)`` (about half zeros), r = 30
- sparse-large (not in the default set): ``make_sparse_counts(300_000, 50_000, 5_500_000, 32)``
  (about 5.8M nonzeros), r = 32

Pairs (same start, ``tol=0``, a fixed number of iterations)
------------------------------------------------------------
- fastnmf ``solver="mu"`` Frobenius     vs  sklearn ``solver="mu"``, Frobenius
- fastnmf ``solver="hals"`` Frobenius   vs  sklearn ``solver="cd"`` (one CD sweep per factor per
  iteration; fastnmf's HALS may repeat its sweep inside an iteration, Gillis & Glineur 2012, so
  compare the final loss as well as the time)
- fastnmf ``solver="mu"`` KL            vs  sklearn ``solver="mu"``, ``beta_loss="kullback-leibler"``

Method
------
- One start per problem (``--init``: NNDSVDa computed once by fastnmf's initializer, or
  sklearn-style seeded random), copied into every fit, in X's dtype (float64).
- Numba JIT warm-up first: one short fit of every solver/loss on small dense and sparse data.
- Seconds per iteration = (t(N iterations) - t(1 iteration)) / (N - 1): the difference cancels
  the per-fit overhead both libraries pay (input checks, fastnmf's transposed CSR copy, the
  loss at the start and at the end). The total seconds of the N-iteration fit are reported too.
  fastnmf is timed over at least as many iterations as its MU/HALS pairs (30; 10 on the large
  problem) even where scikit-learn's N is small (KL: 3 and 2), so its difference is not noise;
  the losses are still compared after the same N.
- fastnmf's ``eval_every`` is set to N, so it evaluates its loss only at the start and the end,
  like sklearn with ``tol=0``.
- Each repeat runs fastnmf and sklearn back to back; the table shows medians over repeats of the
  seconds per iteration and of the per-repeat ratio (timings on a shared machine are noisy).
- Threads: fastnmf ``n_threads=2`` (it sets Numba and, through threadpoolctl, BLAS to 2 inside
  the call and restores them); sklearn runs with its defaults (BLAS pool as found, printed
  below; its CD sweep and scipy's sparse products are single-threaded).
- ``--time-to-cd K``: sklearn ``cd`` runs K iterations (time T_cd, loss L); then fastnmf HALS
  runs from the same start with its loss evaluated every iteration (that cost included) and a
  callback that stops it at the first iteration whose loss is <= L. Reported: T_cd, fastnmf's
  time and iterations to reach L, and T_cd / T_fastnmf (median over repeats).
- ``--dtype float32``: X and the start in float32 for both libraries (default float64).
- Final loss: computed here, in float64, by one formula independent of both libraries:
  Frobenius 0.5 ||X - WH||^2 through the Gram identity
  0.5 (||X||^2 - 2 <W, X H^T> + <W^T W, H H^T>); generalized KL as the sum over the nonzeros
  of x log(x / wh) - x plus sum(WH) = (1^T W)(H 1). Each library's own reported loss is
  checked against it (a mismatch is printed as a warning).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import scipy
import scipy.sparse as sp

try:
    import fastnmf
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fastnmf
from fastnmf.datasets import make_dense_images, make_sparse_counts

try:                      # imported by asv as part of the benchmarks package
    from . import _common
except ImportError:       # run as a script: benchmarks/ is on sys.path
    import _common

import numba
from threadpoolctl import threadpool_info

# scikit-learn is imported in main(): asv imports every module of this package when it
# discovers benchmarks, and its environments need not have scikit-learn.
sklearn = SkNMF = None

N_THREADS = 2

# (label, fastnmf kwargs, sklearn kwargs, key of the iteration count)
PAIRS = [
    ("MU Frobenius", dict(solver="mu", beta_loss="frobenius"),
     dict(solver="mu", beta_loss="frobenius"), "mu"),
    ("HALS / CD Frobenius", dict(solver="hals", beta_loss="frobenius"),
     dict(solver="cd", beta_loss="frobenius"), "hals"),
    ("MU KL", dict(solver="mu", beta_loss="kullback-leibler"),
     dict(solver="mu", beta_loss="kullback-leibler"), "kl"),
]


# -- problems ----------------------------------------------------------------------------------
def problems(quick):
    if quick:  # the large problem has no quick variant: --quick runs sparse and dense only
        return [
            ("sparse", lambda: make_sparse_counts(5_000, 2_000, 100_000, 20), 20,
             dict(mu=20, hals=20, kl=10, fast=20)),
            ("dense", lambda: make_dense_images(2_000, 784, 30), 30,
             dict(mu=20, hals=20, kl=10, fast=20)),
        ]
    return [
        ("sparse", lambda: make_sparse_counts(50_000, 20_000, 2_100_000, 20), 20,
         dict(mu=30, hals=30, kl=3, fast=30)),
        ("dense", lambda: make_dense_images(10_000, 784, 30), 30,
         dict(mu=30, hals=30, kl=10, fast=30)),
        ("sparse-large", lambda: make_sparse_counts(300_000, 50_000, 5_500_000, 32), 32,
         dict(mu=10, hals=10, kl=2, fast=10)),
    ]


def make_start(X, r, init, seed=0):
    """(W0, H0) in X's dtype, C-contiguous."""
    if init == "nndsvda":
        from fastnmf._init import initialize   # private, but this is fastnmf's own repo
        W0, Ht0 = initialize(X, r, "nndsvda", seed, X.dtype)
        H0 = Ht0.T
    else:  # scikit-learn's "random" scaling: sqrt(mean(X) / r) * |N(0, 1)|
        rng = np.random.default_rng(seed)
        m, n = X.shape
        avg = np.sqrt(float(X.sum(dtype=np.float64)) / (m * n) / r)
        W0 = avg * np.abs(rng.standard_normal((m, r)))
        H0 = avg * np.abs(rng.standard_normal((r, n)))
    return (np.ascontiguousarray(W0, dtype=X.dtype), np.ascontiguousarray(H0, dtype=X.dtype))


# -- the independent loss --------------------------------------------------------------------
def frobenius_loss(X, W, H):
    """0.5 ||X - W H||_F^2 via the Gram identity, float64 (shared with the asv suite)."""
    return 0.5 * _common.squared_error(X, W, H)[0]


def kl_loss(X, W, H, chunk=1 << 18):
    """Generalized KL  sum x log(x / wh) - x + wh  over all entries, float64: the nonzeros of
    X explicitly, the zeros through sum(WH) = (1^T W)(H 1). wh = 0 at a nonzero gives inf."""
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    if sp.issparse(X):
        C = X.tocoo()
        rows, cols, vals = C.row, C.col, C.data.astype(np.float64)
    else:
        rows, cols = np.nonzero(X)
        vals = np.asarray(X, dtype=np.float64)[rows, cols]
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    Ht = np.ascontiguousarray(H.T)
    total = 0.0
    with np.errstate(divide="ignore"):
        for s in range(0, vals.size, chunk):
            sl = slice(s, s + chunk)
            wh = np.einsum("ij,ij->i", W[rows[sl]], Ht[cols[sl]])
            x = vals[sl]
            total += float(np.sum(x * np.log(x / wh) - x))
    total += float(W.sum(axis=0) @ H.sum(axis=1))
    return total


def independent_loss(X, W, H, beta_loss):
    return frobenius_loss(X, W, H) if beta_loss == "frobenius" else kl_loss(X, W, H)


# -- fits --------------------------------------------------------------------------------------
def fit_fastnmf(X, W0, H0, r, n_iter, kw):
    t = time.perf_counter()
    W, H, info = fastnmf.nmf(X, r, init="custom", W=W0.copy(), H=H0.copy(), tol=0,
                             max_iter=n_iter, eval_every=n_iter, n_threads=N_THREADS, **kw)
    return time.perf_counter() - t, W, H, float(info["data_loss"])


def fit_sklearn(X, W0, H0, r, n_iter, kw):
    model = SkNMF(r, init="custom", tol=0, max_iter=n_iter, **kw)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning: max_iter reached (on purpose)
        W = model.fit_transform(X, W=W0.copy(), H=H0.copy())
    elapsed = time.perf_counter() - t
    # reconstruction_err_ = sqrt(2 * loss) for both losses in sklearn
    return elapsed, W, model.components_, 0.5 * float(model.reconstruction_err_) ** 2


def warm_up(dtype="float64", problem_ranks=()):
    """Compile (or load from cache) every kernel the timed fits use, dense and CSR, in the
    run's dtype: at the problems' own ranks (the fixed-rank CSR kernels are compiled per
    rank) and at the smallest rank that reaches each of the three compiled copies of the
    loop row kernels (fastnmf picks one by the rank: ``fastnmf._jit.copy_for``). The warm-up
    data is small, and problems that small take no rank-specialized kernel
    (``fastnmf._data.RANK_KERNEL_MIN_WORK``), so it fits each case with that rule both
    lowered to 0 and as it is: the timed problems are above it (with ``--quick`` the sparse
    ones are below)."""
    from fastnmf import _data
    from fastnmf._jit import copy_for
    t = time.perf_counter()
    limit = getattr(_data, "RANK_KERNEL_MIN_WORK", 0)   # an older fastnmf: no such rule
    Xs = make_sparse_counts(300, 200, 3_000, 5, random_state=1).astype(dtype)
    Xd = make_dense_images(100, 64, 5, random_state=1).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    ranks = sorted({min(r for r in range(1, 65) if copy_for(r, itemsize) == c)
                    for c in ("interleaved", "single", "narrow")} | set(problem_ranks))
    try:
        for X in (Xs, Xd):
            for r in ranks:
                W0, H0 = make_start(X, r, "random")
                for _, fkw, skw, _ in PAIRS:
                    for work in (0, limit):
                        _data.RANK_KERNEL_MIN_WORK = work
                        fit_fastnmf(X, W0, H0, r, 3, fkw)
                    fit_sklearn(X, W0, H0, r, 3, skw)
    finally:
        _data.RANK_KERNEL_MIN_WORK = limit
    return time.perf_counter() - t


def seconds_to_cd_loss(X, W0, H0, r, cd_iters, repeats):
    """sklearn cd for ``cd_iters`` iterations, then fastnmf HALS until its loss is <= cd's."""
    rows = []
    for _ in range(repeats):
        t_cd, Ws, Hs, _ = fit_sklearn(X, W0, H0, r, cd_iters,
                                      dict(solver="cd", beta_loss="frobenius"))
        target = frobenius_loss(X, Ws, Hs)
        reached = {}

        def stop(it, W, H, loss):
            reached.update(it=it, loss=loss)
            return loss <= target

        t = time.perf_counter()
        fastnmf.nmf(X, r, init="custom", W=W0.copy(), H=H0.copy(), tol=0,
                    max_iter=10 * cd_iters, eval_every=1, n_threads=N_THREADS,
                    solver="hals", beta_loss="frobenius", callback=stop)
        t_f = time.perf_counter() - t
        ok = reached.get("loss", np.inf) <= target
        rows.append(dict(cd_seconds=t_cd, cd_loss=target, fast_seconds=t_f,
                         fast_iters=reached.get("it"), fast_loss=reached.get("loss"),
                         reached=bool(ok), ratio=t_cd / t_f if ok else float("nan")))
    return rows


def median(values):
    return float(statistics.median(values))


def bench_pair(X, W0, H0, r, n_iter, fkw, skw, repeats, fast_iters=None):
    """Interleaved repeats; per-iteration time by the N-minus-1 difference. fastnmf's time may
    use more iterations (``fast_iters``) than the N both losses are compared after: when N
    is small (scikit-learn's KL: ~1 s per iteration) a difference of two short fastnmf fits
    is mostly noise."""
    rows = []
    nf = max(n_iter, fast_iters or n_iter)
    for _ in range(repeats):
        tf_n, Wf, Hf, lf = fit_fastnmf(X, W0, H0, r, nf, fkw)
        ts_n, Ws, Hs, ls = fit_sklearn(X, W0, H0, r, n_iter, skw)
        tf_1 = fit_fastnmf(X, W0, H0, r, 1, fkw)[0]
        ts_1 = fit_sklearn(X, W0, H0, r, 1, skw)[0]
        pf = (tf_n - tf_1) / (nf - 1) if nf > 1 else tf_n
        ps = (ts_n - ts_1) / (n_iter - 1) if n_iter > 1 else ts_n
        rows.append(dict(fast_total=tf_n, sk_total=ts_n, fast_1=tf_1, sk_1=ts_1,
                         fast_iters=nf, fast_per_iter=pf, sk_per_iter=ps,
                         ratio=ps / pf if pf > 0 else float("nan")))
    if nf != n_iter:   # the loss comparison is after the same N iterations
        _, Wf, Hf, lf = fit_fastnmf(X, W0, H0, r, n_iter, fkw)
    return rows, (Wf, Hf, lf), (Ws, Hs, ls)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def environment():
    pools = [dict(user_api=p.get("user_api"), internal_api=p.get("internal_api"),
                  num_threads=p.get("num_threads"), version=p.get("version"))
             for p in threadpool_info()]
    return dict(python=platform.python_version(), numpy=np.__version__,
                scipy=scipy.__version__,
                numba=numba.__version__, sklearn=sklearn.__version__,
                fastnmf=getattr(fastnmf, "__version__", "?"), cpu_count=os.cpu_count(),
                numba_num_threads=numba.config.NUMBA_NUM_THREADS,
                fastnmf_n_threads=N_THREADS, threadpools=pools,
                machine=platform.machine(), platform=platform.platform())


def fmt_s(x):
    return f"{x:.4f}" if x < 10 else f"{x:.2f}"


def main(argv=None):
    global sklearn, SkNMF, N_THREADS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small problems (seconds)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved repeats per pair (default 5, --quick 3)")
    p.add_argument("--init", choices=("nndsvda", "random"), default="nndsvda")
    p.add_argument("--problems", default="sparse,dense",
                   help="comma-separated subset of: sparse,dense")
    p.add_argument("--iters", default=None,
                   help="override iteration counts, e.g. mu=30,hals=30,kl=3")
    p.add_argument("--threads", type=int, default=N_THREADS,
                   help=f"fastnmf's n_threads (default {N_THREADS})")
    p.add_argument("--time-to-cd", type=int, default=0, metavar="K",
                   help="also time fastnmf HALS to reach sklearn cd's loss after K iterations")
    p.add_argument("--no-pairs", action="store_true",
                   help="skip the per-iteration pairs (e.g. with --time-to-cd only)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    N_THREADS = args.threads
    import sklearn
    from sklearn.decomposition import NMF as SkNMF
    repeats = args.repeats or (3 if args.quick else 5)
    wanted = {s.strip() for s in args.problems.split(",") if s.strip()}
    overrides = {}
    if args.iters:
        for item in args.iters.split(","):
            k, v = item.split("=")
            overrides[k.strip()] = int(v)

    t_start = time.perf_counter()
    env = environment()
    print(f"# fastnmf {env['fastnmf']} vs scikit-learn {env['sklearn']}"
          f"{' (quick)' if args.quick else ''}")
    print(f"python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, "
          f"numba {env['numba']}; {env['cpu_count']} CPUs; fastnmf n_threads={N_THREADS}; "
          f"sklearn default threads; BLAS pools: "
          + ", ".join(f"{q['internal_api']} {q['version']} x{q['num_threads']}"
                      for q in env["threadpools"]))
    load0 = os.getloadavg()
    warm = warm_up(args.dtype, {r for name, _, r, _ in problems(args.quick) if name in wanted})
    print(f"JIT warm-up: {warm:.1f} s; init={args.init}; repeats={repeats}; load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (other processes slow down the "
          f"{N_THREADS}-thread parallel regions)\n")

    results, time_to = [], []
    for name, build, r, iters in problems(args.quick):
        if name not in wanted:
            continue
        iters = {**iters, **overrides}
        t = time.perf_counter()
        X = build().astype(args.dtype)
        t_data = time.perf_counter() - t
        t = time.perf_counter()
        W0, H0 = make_start(X, r, args.init)
        t_init = time.perf_counter() - t
        desc = (f"{name} {X.shape[0]}x{X.shape[1]} "
                + (f"nnz={X.nnz}" if sp.issparse(X) else f"zeros={np.mean(X == 0):.0%}")
                + f" r={r}")
        print(f"{desc}: data {t_data:.1f} s, {args.init} start {t_init:.1f} s", flush=True)
        if args.time_to_cd:
            ttc = seconds_to_cd_loss(X, W0, H0, r, args.time_to_cd, min(repeats, 3))
            med = dict(problem=name, description=desc, cd_iters=args.time_to_cd, repeats=ttc,
                       cd_seconds=median([x["cd_seconds"] for x in ttc]),
                       fast_seconds=median([x["fast_seconds"] for x in ttc]),
                       ratio=median([x["ratio"] for x in ttc]))
            time_to.append(med)
            print(f"  time to sklearn cd's loss after {args.time_to_cd} iterations "
                  f"({ttc[0]['cd_loss']:.6g}): cd {med['cd_seconds']:.2f} s, fastnmf HALS "
                  f"{med['fast_seconds']:.2f} s ({[x['fast_iters'] for x in ttc]} iterations, "
                  f"loss evaluated every iteration), x{med['ratio']:.2f}", flush=True)
        for label, fkw, skw, key in ([] if args.no_pairs else PAIRS):
            n_iter = iters[key]
            reps, (Wf, Hf, lf), (Ws, Hs, ls) = bench_pair(X, W0, H0, r, n_iter, fkw, skw,
                                                          repeats, fast_iters=iters["fast"])
            loss_f = independent_loss(X, Wf, Hf, fkw["beta_loss"])
            loss_s = independent_loss(X, Ws, Hs, skw["beta_loss"])
            loss_0 = independent_loss(X, W0, H0, fkw["beta_loss"])
            for who, own, ind in (("fastnmf", lf, loss_f), ("sklearn", ls, loss_s)):
                if rel(own, ind) > 1e-6:
                    print(f"  WARNING: {who} {label} reports loss {own:.10g}, the independent "
                          f"formula gives {ind:.10g} (rel. diff {rel(own, ind):.2e})")
            res = dict(problem=name, description=desc, shape=list(X.shape),
                       nnz=int(X.nnz) if sp.issparse(X) else int(np.count_nonzero(X)),
                       sparse=bool(sp.issparse(X)), rank=r, method=label,
                       fastnmf=fkw, sklearn=skw, n_iter=n_iter, repeats=reps,
                       fast_per_iter=median([x["fast_per_iter"] for x in reps]),
                       sk_per_iter=median([x["sk_per_iter"] for x in reps]),
                       ratio=median([x["ratio"] for x in reps]),
                       fast_total=median([x["fast_total"] for x in reps]),
                       sk_total=median([x["sk_total"] for x in reps]),
                       loss_start=loss_0, loss_fastnmf=loss_f, loss_sklearn=loss_s,
                       loss_fastnmf_reported=lf, loss_sklearn_reported=ls)
            res["loadavg_1min"] = os.getloadavg()[0]
            results.append(res)
            print(f"  {label:<20s} N={n_iter:<3d} fastnmf {fmt_s(res['fast_per_iter'])} s/it, "
                  f"sklearn {fmt_s(res['sk_per_iter'])} s/it, x{res['ratio']:.2f}; "
                  f"loss {loss_f:.6g} vs {loss_s:.6g}", flush=True)
        print()

    total = time.perf_counter() - t_start
    loss_name = {"MU Frobenius": "0.5‖X−WH‖²", "HALS / CD Frobenius": "0.5‖X−WH‖²",
                 "MU KL": "KL(X‖WH)"}
    lines = [
        "| data | fastnmf vs sklearn | iters | fastnmf s/iter | sklearn s/iter "
        "| speedup (sklearn/fastnmf) | loss | start | fastnmf | sklearn | fastnmf/sklearn |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for res in results:
        f, s = res["fastnmf"], res["sklearn"]
        pair = (f"{f['solver'].upper()} vs {s['solver']}"
                + (" (KL)" if f["beta_loss"] != "frobenius" else ""))
        lines.append(
            f"| {res['description']} | {pair} | {res['n_iter']} | {fmt_s(res['fast_per_iter'])} "
            f"| {fmt_s(res['sk_per_iter'])} | {res['ratio']:.2f}x | {loss_name[res['method']]} "
            f"| {res['loss_start']:.6g} | {res['loss_fastnmf']:.6g} | {res['loss_sklearn']:.6g} "
            f"| {res['loss_fastnmf'] / res['loss_sklearn']:.4f} |")
    print("\n".join(lines))
    print(f"\nSeconds per iteration: median over {repeats} interleaved repeats of "
          "(t(N) - t(1)) / (N - 1); speedup: median of the per-repeat ratios. Losses after N "
          "iterations from the same start, computed here (Gram identity / nonzeros + column "
          f"sums), not by either library. Total wall time {total:.1f} s; 1-minute load "
          f"average at the start {load0[0]:.2f}, at the end {os.getloadavg()[0]:.2f}.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(environment=env, quick=args.quick, init=args.init,
                           loadavg_start=list(load0), loadavg_end=list(os.getloadavg()),
                           repeats=repeats, warmup_s=warm, total_s=total, results=results,
                           dtype=args.dtype, time_to_cd=time_to),
                      fh, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
