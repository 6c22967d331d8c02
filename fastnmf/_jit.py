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
sweeps. LLVM vectorizes such a loop in 32-byte vectors (4 float64 / 8 float32 lanes) and by
default interleaves two vectors per iteration; what is left goes to a scalar loop. A float64
row of r = 20 thus ran 16 elements vectorized and 4 scalar, every time. Numba has no
per-function switch for this, so a row kernel is compiled twice, lazily: as usual, and with
LLVM's interleave count forced to 1 (``-force-vector-interleave``, set only while that copy
compiles, under Numba's compiler lock, then reset to LLVM's default 0 = automatic). A call
takes the second when r mod (2 lanes) >= lanes, i.e. when the default would leave at least
a whole vector to the scalar loop (float64 r = 20: five vectors, no remainder). Measured with
both compiled in one process (2.24M nonzeros, 2 threads, alternating order): float64 r = 20
product 1.21x, KL numerator 1.08x, HALS sweeps 1.23x; r = 30 1.07x / 1.05x / 1.20x; float32
r = 24 1.22x / 1.22x / 1.34x. Where the rule keeps the default the forced copy was no better
(float64 r = 32 sweeps 0.86x, float32 r = 20 product 0.85x). Measured at float64 r = 10, 20,
30, 32 and float32 r = 16, 20, 24, 32; other ranks follow the rule untested.
"""
import functools
import types as pytypes

import llvmlite.binding as llvm
import numba
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


# LLVM before 15 (llvmlite < 0.44, Numba < 0.61) rejects a command-line option given a second
# time, silently, so the reset would not happen and every later compile in the process would
# keep interleave 1. There the row kernels are compiled once, the usual way.
CAN_SCOPE_INTERLEAVE = llvm.llvm_version_info >= (15,)

class _InterleaveOneDispatcher(CPUDispatcher):
    """Compiles with LLVM's loop interleave count 1 (see the module docstring). A load from
    the on-disk cache goes through ``compile`` too and is unaffected."""

    def compile(self, sig):
        # Under the (re-entrant) compiler lock no other Numba compile runs meanwhile. Forced
        # compiles never nest: a RowKernel is a Python object, no jitted code can call it.
        with global_compiler_lock:
            llvm.set_option("", "-force-vector-interleave=1")
            try:
                return super().compile(sig)
            finally:
                llvm.set_option("", "-force-vector-interleave=0")


VECTOR_BYTES = 32  # AVX2; on wider hardware the choice may be off (speed only, never results)


class RowKernel:
    """A ``parallel_kernel`` compiled as usual and with loop interleave count 1; a call picks
    one by the row length r of its first 2-D array argument (the factor rows). The two copies
    add the row's products in different orders in their dot products (the KL kernels and the
    sweeps), so their results can differ in the last bits; each is deterministic and
    independent of the thread count."""

    def __init__(self, func):
        functools.update_wrapper(self, func)
        self.py_func = func
        self.interleaved = numba.njit(parallel=True, **_COMMON)(func)
        if not CAN_SCOPE_INTERLEAVE:
            self.single = self.interleaved
            return
        copy = pytypes.FunctionType(func.__code__, func.__globals__, func.__name__,
                                    func.__defaults__, func.__closure__)
        copy.__module__ = func.__module__
        copy.__qualname__ = func.__qualname__ + "_interleave1"   # its own cache entry
        self.single = _InterleaveOneDispatcher(
            py_func=copy, locals={}, targetoptions=dict(nopython=True, parallel=True, **_OPTS))
        self.single.enable_caching()

    @property
    def signatures(self):
        """The signatures compiled so far, by either copy."""
        if self.single is self.interleaved:
            return self.interleaved.signatures
        return self.interleaved.signatures + self.single.signatures

    def for_rows(self, rows):
        """The compiled kernel for factor rows like the 2-D array ``rows``."""
        lanes = max(1, VECTOR_BYTES // rows.itemsize)
        return self.single if rows.shape[1] % (2 * lanes) >= lanes else self.interleaved

    def __reduce__(self):  # pickled by reference, like a module-level jitted function
        return _module_attribute, (self.__module__, self.__name__)

    def __call__(self, *args, **kwargs):
        for a in args:
            if getattr(a, "ndim", 0) == 2:
                return self.for_rows(a)(*args, **kwargs)
        raise TypeError(f"{self.__name__}: no 2-D array argument (the factor rows)")


def _module_attribute(module, name):
    import importlib
    return getattr(importlib.import_module(module), name)


def row_kernel(func):
    """Compile ``func`` as a ``RowKernel`` (see the module docstring)."""
    return RowKernel(func)
