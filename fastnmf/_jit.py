"""The one place that sets Numba compilation options for every kernel.

Kernels import ``parallel_kernel`` / ``serial_kernel`` / ``inline_helper`` from here and never
pass options of their own (see docs/architecture.md).

- ``fastmath``: only flags that keep IEEE special values intact. ``reassoc`` lets LLVM vectorize
  the short r-length dot products; ``contract`` allows FMA. Never ``nnan``/``ninf``: the eps
  guards and the NaN checks need IEEE semantics.
- ``error_model="numpy"``: division by zero gives inf/nan instead of raising (and is faster);
  the callers guard every denominator, so this never reaches a user.
- ``cache=True``: compiled machine code is stored next to the modules, so only the very first
  import on a machine pays the compile time.
- ``nogil=True``: kernels release the GIL, so callers may run fits in Python threads.
"""
import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

_COMMON = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))


def parallel_kernel(func):
    """Compile ``func`` as a multithreaded kernel (its ``prange`` loops run in parallel)."""
    return numba.njit(parallel=True, **_COMMON)(func)


def serial_kernel(func):
    """Compile ``func`` as a single-threaded kernel."""
    return numba.njit(parallel=False, **_COMMON)(func)


def inline_helper(func):
    """A small jitted function meant to be called from kernels (inlined by LLVM)."""
    return numba.njit(inline="always", **_COMMON)(func)
