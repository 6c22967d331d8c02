"""Start-up cost: a new interpreter runs ``import fastnmf`` and a first small fit.

    python benchmarks/first_call.py            # cold then warm on-disk cache, 3 runs each

Cold: ``NUMBA_CACHE_DIR`` points at a new empty directory, so every kernel the fit needs is
compiled. Warm: the same directory again, so the kernels are loaded from Numba's on-disk
cache (what every run after the first on a machine sees). Each case times, in a fresh process,
``import fastnmf`` alone and the import plus the first fits: a sparse KL fit and a sparse HALS
fit (``--fits`` picks others), at rank 4. New rank: the warm cache again, but fits at rank
7, which no earlier run compiled for (what each new rank of a rank selection sees; problems
this small use no rank-specialized kernel, ``_data.RANK_KERNEL_MIN_WORK``). The medians of
``--runs`` runs are reported.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import fastnmf
t1 = time.perf_counter()
import scipy.sparse as sp, numpy as np
X = sp.random(300, 200, density=0.05, format="csr", random_state=0) * 5
for solver, beta in {fits!r}:
    fastnmf.nmf(X, {rank}, solver=solver, beta_loss=beta, max_iter=5, tol=0)
t2 = time.perf_counter()
print(t1 - t0, t2 - t0)
"""

FITS = {"kl+hals": [("mu", "kullback-leibler"), ("hals", "frobenius")],
        "mu": [("mu", "frobenius")]}


def run(cache_dir, fits, rank=4):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    child = CHILD.format(root=ROOT, fits=FITS[fits], rank=rank)
    out = subprocess.run([sys.executable, "-c", child],
                         capture_output=True, text=True, env=env, check=True)
    imp, total = map(float, out.stdout.split())
    return imp, total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--fits", choices=sorted(FITS), default="kl+hals")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    cold, warm, new_rank = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            cold.append(run(d, args.fits))
            warm.append(run(d, args.fits))
            new_rank.append(run(d, args.fits, rank=7))
    res = {}
    for name, rows in (("cold cache", cold), ("warm cache", warm),
                       ("warm cache, new rank", new_rank)):
        imp = statistics.median(r[0] for r in rows)
        total = statistics.median(r[1] for r in rows)
        res[name] = dict(import_s=imp, import_and_fits_s=total, runs=rows)
        print(f"{name}: import fastnmf {imp:.2f} s; import + first fits ({args.fits}) "
              f"{total:.2f} s  (median of {args.runs})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
