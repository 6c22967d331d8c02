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

``row_kernel`` is ``parallel_kernel`` for kernels whose inner loops run over one factor row
of r elements (r ~ 10-64) per nonzero or per coordinate: the CSR gather kernels and the HALS
sweeps. LLVM vectorizes such a loop 4 float64 lanes wide and by default interleaves two
vectors per iteration, so a float64 row of r = 20 ran 16 elements vectorized and 4 in a
scalar remainder loop, every time. Float64 signatures of these kernels are compiled with the
interleave count forced to 1 (LLVM's ``-force-vector-interleave``, set only while such a
signature compiles, under Numba's compiler lock, then reset to LLVM's default 0 = automatic):
r = 20 is five vectors and no remainder. Measured on 2.24M nonzeros, float64, r = 10-32:
products 1.12-1.37x, KL numerator 0.94-1.15x, HALS sweeps 0.95-1.21x (r = 32, already a
multiple of 8, about unchanged). float32 keeps LLVM's default: at r = 20 (8 lanes, the same
4-element remainder either way) the product and the sweeps were 0.86-0.94x with it.
"""
import llvmlite.binding as llvm
import numba
from numba.core import sigutils, types
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

_OPTS = dict(nogil=True, error_model="numpy", fastmath=set(FASTMATH))
_COMMON = dict(cache=True, **_OPTS)


def parallel_kernel(func):
    """Compile ``func`` as a multithreaded kernel (its ``prange`` loops run in parallel)."""
    return numba.njit(parallel=True, **_COMMON)(func)


def serial_kernel(func):
    """Compile ``func`` as a single-threaded kernel."""
    return numba.njit(parallel=False, **_COMMON)(func)


def inline_helper(func):
    """A small jitted function meant to be called from kernels (inlined by LLVM)."""
    return numba.njit(inline="always", **_COMMON)(func)


class _RowKernelDispatcher(CPUDispatcher):
    """Compiles a signature with a 2-D float64 argument (float64 factor rows) with LLVM's
    loop interleave count 1 (see the module docstring), any other as usual. A load from the
    on-disk cache goes through ``compile`` too and is unaffected."""

    def compile(self, sig):
        args, _ = sigutils.normalize_signature(sig)
        if not any(isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float64
                   for a in args):
            return super().compile(sig)
        with global_compiler_lock:  # re-entrant; no other Numba compile runs meanwhile
            llvm.set_option("", "-force-vector-interleave=1")
            try:
                return super().compile(sig)
            finally:
                llvm.set_option("", "-force-vector-interleave=0")


def row_kernel(func):
    """Compile ``func`` like ``parallel_kernel``; float64 rows with loop interleave count 1."""
    disp = _RowKernelDispatcher(py_func=func, locals={},
                                targetoptions=dict(nopython=True, parallel=True, **_OPTS))
    disp.enable_caching()
    return disp
