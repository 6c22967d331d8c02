"""Thread control: Numba's pool and the BLAS pools are set together for a call and restored
afterwards, also when the call raises.

During the iterations BLAS is held to one thread: all parallel work runs in Numba's pool
(dense products call BLAS per row block from inside it). Two pools on the same cores spin
against each other after every call; measured on 2 cores, a dense MU iteration took 13x
longer with both pools at 2 threads than with Numba alone.
"""
import contextlib
import numbers
import warnings

import numba
# Numba's np.dot calls SciPy's own BLAS (a second OpenBLAS next to NumPy's). Load it now:
# threadpoolctl limits only libraries already loaded, and an unlimited BLAS called from
# inside Numba's parallel blocks oversubscribes the cores (measured: 40x slower GEMM blocks).
import scipy.linalg.cython_blas  # noqa: F401

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is a declared dependency
    threadpool_limits = None


def max_threads():
    return numba.config.NUMBA_NUM_THREADS


def resolve_n_threads(n_threads):
    """None or -1: all of Numba's threads; a positive int, at most that many."""
    if n_threads is None or (isinstance(n_threads, numbers.Integral) and n_threads == -1):
        return max_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) or n_threads < 1:
        raise ValueError(f"n_threads={n_threads!r} must be a positive integer, -1 or None (all).")
    n = int(n_threads)
    if n > max_threads():
        warnings.warn(
            f"n_threads={n} exceeds the {max_threads()} threads Numba started with "
            "(NUMBA_NUM_THREADS); using that many.", UserWarning, stacklevel=3)
        n = max_threads()
    return n


@contextlib.contextmanager
def thread_limit(n_threads, blas_threads=None):
    """Use ``n_threads`` Numba threads and ``blas_threads`` (default the same) BLAS threads
    inside the block."""
    old = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=n_threads if blas_threads is None else blas_threads):
                yield
    finally:
        numba.set_num_threads(old)
