"""Command line: ``python -m fastnmf demo`` factorizes a generated sparse count matrix."""
import argparse
import sys
import time


def _demo(args):
    import numpy as np

    from . import nmf
    from .datasets import make_sparse_counts

    t0 = time.perf_counter()
    X = make_sparse_counts(args.rows, args.cols, args.nnz, args.rank, random_state=args.seed,
                           dtype=np.float32 if args.float32 else np.float64)
    t_data = time.perf_counter() - t0
    print(f"data: {X.shape[0]} x {X.shape[1]} sparse counts, {X.nnz} nonzeros "
          f"({100 * X.nnz / (X.shape[0] * X.shape[1]):.3f}% dense), {X.dtype}, "
          f"planted rank {args.rank}  [{t_data:.1f}s to generate]")
    # first call compiles the kernels (cached on disk afterwards): time it separately
    t0 = time.perf_counter()
    nmf(X[:200], args.rank, beta_loss=args.loss, solver=args.solver, max_iter=2, tol=0,
        random_state=0, n_threads=args.threads)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    W, H, info = nmf(X, args.rank, beta_loss=args.loss, solver=args.solver,
                     max_iter=args.max_iter, tol=args.tol, random_state=args.seed,
                     n_threads=args.threads, verbose=args.verbose)
    elapsed = time.perf_counter() - t0
    print(f"fit: loss={args.loss} solver={info['solver']} init={info['init']} "
          f"threads={info['n_threads']}")
    print(f"  initial loss   {info['loss_history'][0]:.6e}")
    print(f"  final loss     {info['loss']:.6e}")
    print(f"  iterations     {info['n_iter']} (stopped by {info['stop_reason']})")
    print(f"  time           {elapsed:.2f}s total, {elapsed / max(info['n_iter'], 1):.4f}s "
          f"per iteration (incl. init); warm-up/compile {t_compile:.2f}s")
    print(f"  W {W.shape} {W.dtype}, H {H.shape} {H.dtype}, "
          f"nonzeros in W {100 * np.mean(W > 0):.1f}%, in H {100 * np.mean(H > 0):.1f}%")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnmf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="factorize a generated sparse count matrix")
    demo.add_argument("--rows", type=int, default=20_000)
    demo.add_argument("--cols", type=int, default=5_000)
    demo.add_argument("--nnz", type=int, default=400_000)
    demo.add_argument("--rank", type=int, default=20)
    demo.add_argument("--loss", default="kl", help="frobenius, kl, is or a number (beta)")
    demo.add_argument("--solver", default="auto", choices=["auto", "mu", "hals"])
    demo.add_argument("--max-iter", type=int, default=200)
    demo.add_argument("--tol", type=float, default=1e-4)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--float32", action="store_true")
    demo.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.loss = float(args.loss)
    except ValueError:
        pass
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
