"""pytest-benchmark micro benchmarks: every Numba kernel, and small end-to-end fits.

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only

Not part of the default test run (pytest's testpaths is tests/). The kernel cases are the asv
kernel benchmarks of bench_kernels.py at the "small" size (same data, same work per call, same
setup), so the two tools measure the same thing; the fits are fixed work (FIT_ITERS iterations,
tol=0) from the fixed start of _common.py at the "small" size. Each case calls its kernel or fit
once before timing, so JIT compilation (or loading the on-disk cache) is not measured. With
``--benchmark-disable`` every case runs once as a plain test (a smoke test of the suite).
"""
import numpy as np

from . import _common as c
from . import bench_kernels as bk

try:
    import pytest
    parametrize = pytest.mark.parametrize
    # short calibration: the whole file runs in well under two minutes on 2 cores
    pytestmark = pytest.mark.benchmark(max_time=0.5, min_rounds=10, warmup=False)
except ImportError:  # asv imports every module of this package; its envs need not have pytest
    def parametrize(*args, **kwargs):
        return lambda func: func

SIZE = "small"
KERNEL_CASES = ([(bk.SparseKernels, k) for k in bk.SparseKernels.params[0]]
                + [(bk.DenseKernels, k) for k in bk.DenseKernels.params[0]]
                + [(bk.FactorKernels, k) for k in bk.FactorKernels.params[0]])


@parametrize("dtype", c.DTYPES)
@parametrize("cls,kernel", KERNEL_CASES, ids=[k for _, k in KERNEL_CASES])
def test_kernel(benchmark, cls, kernel, dtype):
    bench = cls()
    try:
        bench.setup(None, kernel, dtype, SIZE)   # builds the call and runs it once
    except NotImplementedError as exc:           # a kernel this checkout does not have
        pytest.skip(str(exc))
    try:
        benchmark.extra_info.update(flops=bench.flops, bytes=bench.nbytes)
        benchmark(bench.call)
        seconds = benchmark.stats.stats.median if benchmark.stats else None
        if seconds:
            benchmark.extra_info.update(gflops=bench.flops / seconds / 1e9,
                                        gbs=bench.nbytes / seconds / 1e9)
    finally:
        bench.teardown(None, kernel, dtype, SIZE)


@parametrize("storage", c.STORAGES)
@parametrize("method", list(c.METHODS))
def test_fit(benchmark, method, storage):
    try:
        X = c.fit_data(storage, SIZE, "float64", method)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    kw = c.fixed_work(method, X)

    def fit():
        return c.nmf(X, c.FIT_RANK, **kw)
    fit()                                        # compile / load from cache, untimed
    W, H, info = benchmark.pedantic(fit, rounds=5, iterations=1)
    assert info["n_iter"] == c.FIT_ITERS and np.isfinite(info["loss"])
