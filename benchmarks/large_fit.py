"""A fit on a sparse matrix with about 100M nonzeros: seconds per iteration and peak memory.

Run from the repository root (about 5 GB of disk in /tmp, 10-15 minutes on 2 cores):

    python benchmarks/large_fit.py                       # 2,000,000 x 500,000, 100M nnz, r = 20
    python benchmarks/large_fit.py --nnz 2000000 --rows 50000 --cols 20000   # a quick check

1. The matrix is made once by ``make_sparse_counts`` in a child process and saved uncompressed
   (``--data``; reused when present), so making it costs the fits nothing in memory.
2. Each method runs in its own fresh child process: it loads X, records its resident set
   (RSS), runs ``fastnmf.nmf`` (random start, ``tol=0``, ``--iters`` iterations, the loss
   evaluated every ``--eval-every`` iterations), and reports the seconds per iteration between
   the first and the last evaluation (so the start-up, the transposed copy and the first loss
   are excluded; the evaluations in between are included) and its peak RSS (``ru_maxrss``).
3. The peak is compared with the bound the design promises: X + one transposed copy of X +
   O((m + n) r) working arrays. No m x n array and no nnz x r temporary exist on sparse input,
   so the part above X + X^T, divided by (m + n) r x 8 bytes, must be a small constant.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD_MAKE = r"""
import sys, time, numpy as np, scipy.sparse as sp
sys.path.insert(0, {root!r})
from fastnmf.datasets import make_sparse_counts
t = time.perf_counter()
X = make_sparse_counts({m}, {n}, {nnz}, 20, random_state=0)
X.indices = X.indices.astype(np.int32)
X.indptr = X.indptr.astype(np.int64)
sp.save_npz({path!r}, X, compressed=False)
print(X.nnz, time.perf_counter() - t)
"""

CHILD_FIT = r"""
import json, resource, sys, time, numpy as np, scipy.sparse as sp
sys.path.insert(0, {root!r})
import fastnmf

def rss_gib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**30

X = sp.load_npz({path!r}).tocsr()
x_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
rss_loaded = rss_gib()
stamps = []
def cb(it, W, H, loss):
    stamps.append((it, time.perf_counter(), loss))
t = time.perf_counter()
W, H, info = fastnmf.nmf(X, {r}, init="random", solver={solver!r}, beta_loss={beta!r}, tol=0,
                         max_iter={iters}, eval_every={every}, n_threads={threads},
                         callback=cb, random_state=0)
total = time.perf_counter() - t
(i0, t0, _), (i1, t1, _) = stamps[0], stamps[-1]
print(json.dumps(dict(
    x_gib=x_bytes / 2**30, rss_loaded_gib=rss_loaded,
    peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    per_iter=(t1 - t0) / (i1 - i0), total=total, n_iter=info["n_iter"],
    loss_first=stamps[0][2], loss_last=stamps[-1][2], shape=list(X.shape), nnz=int(X.nnz))))
"""

METHODS = [("MU Frobenius", "mu", "frobenius"), ("MU KL", "mu", "kullback-leibler"),
           ("HALS", "hals", "frobenius")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--cols", type=int, default=500_000)
    p.add_argument("--nnz", type=int, default=100_000_000)
    p.add_argument("--rank", type=int, default=20)
    p.add_argument("--iters", type=int, default=11)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--data", default=None, help="where the .npz of X lives (default in /tmp)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    path = args.data or f"/tmp/fastnmf_large_{args.rows}x{args.cols}_{args.nnz}.npz"
    if not os.path.exists(path):
        code = CHILD_MAKE.format(root=ROOT, m=args.rows, n=args.cols, nnz=args.nnz, path=path)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        nnz, secs = out.stdout.split()
        print(f"made X: {args.rows} x {args.cols}, {int(nnz):,} nonzeros in {float(secs):.0f} s "
              f"-> {path}", flush=True)
    results = []
    for label, solver, beta in METHODS:
        code = CHILD_FIT.format(root=ROOT, path=path, r=args.rank, solver=solver, beta=beta,
                                iters=args.iters, every=args.eval_every, threads=args.threads)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        m, n = res["shape"]
        factors = (m + n) * args.rank * 8 / 2**30
        extra = res["peak_gib"] - res["rss_loaded_gib"] - res["x_gib"]
        res.update(method=label, factors_gib=factors, above_x_and_xt_gib=extra,
                   above_in_factor_units=extra / factors)
        results.append(res)
        print(f"{label:<13s} {res['per_iter']:.2f} s/iter ({res['n_iter']} iterations, "
              f"{res['total']:.0f} s in all); peak RSS {res['peak_gib']:.2f} GiB = "
              f"{res['rss_loaded_gib']:.2f} after loading X (X is {res['x_gib']:.2f}) + X^T "
              f"{res['x_gib']:.2f} + {extra:.2f} GiB ({extra / factors:.1f} x (m + n) r "
              f"float64s); "
              f"loss {res['loss_first']:.6g} -> {res['loss_last']:.6g}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(args=vars(args), results=results), fh, indent=2)


if __name__ == "__main__":
    main()
