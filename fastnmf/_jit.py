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
sweeps. Two choices of LLVM's loop vectorizer decide how such a row is cut into vectors:

- The vector width. Row kernels are compiled for 32-byte vectors (4 float64 / 8 float32
  lanes) on every x86 host, by LLVM's per-function ``prefer-vector-width`` attribute. On
  AVX-512 hosts whose tuning lets LLVM choose 64-byte vectors (AMD Zen 4) a float64 row of
  r = 20 was otherwise 2.5 vectors; in 32-byte vectors it is five. Measured on a Zen 4 VM
  (2.24M nonzeros, float64, r = 20, 2 threads, alternating order) against the 64-byte
  build the rule below picked: products 1.10-1.17x, KL numerator 1.30-1.35x, KL loss 1.12x,
  HALS sweeps 1.39x; float32 r = 20 sweeps 1.23-1.28x, KL numerator 0.91-1.10x (runs
  disagree). AVX2-only hosts use 32-byte vectors anyway.
- The interleave count. By default LLVM interleaves two vectors per iteration; what is left
  goes to a scalar loop. A float64 row of r = 20 thus ran 16 elements vectorized and 4
  scalar, every time. Numba has no per-function switch for this, so a row kernel is also
  compiled with LLVM's interleave count forced to 1 (``-force-vector-interleave``, set only
  while that copy compiles, under Numba's compiler lock, then reset to LLVM's default 0 =
  automatic). Measured on an AVX2 host (2.24M nonzeros, 2 threads, alternating order):
  float64 r = 20 product 1.21x, KL numerator 1.08x, HALS sweeps 1.23x; r = 30 1.07x /
  1.05x / 1.20x; float32 r = 24 1.22x / 1.22x / 1.34x.

So a row kernel has three compiled copies, each compiled lazily on first use: ``interleaved``
(32-byte vectors, two per iteration), ``single`` (32-byte, one per iteration) and ``narrow``
(16-byte, one per iteration). A call takes the copy with the fewest vector operations per
row of r elements, a scalar remainder element counting as two (``copy_for``; ties go to
the wider copy, and to the interleaved one only for rows of at least four of its
iterations): float64 r = 20 is five 32-byte vectors (single), float32 r = 20 five 16-byte
ones (narrow; 32-byte vectors leave four scalars), float64 r = 32 goes to the default
(interleaved), float32 r = 32 to the single copy. Measured on the Zen 4 host, same
process, alternating order: the narrow copy against the copy a two-copy rule took (single at float32 r = 12: products 1.21-1.22x, KL
numerators 1.32x, sweeps 1.32x; interleaved at float32 r = 20: 1.02-1.03x / 1.08-1.09x /
1.15x). Where the rule keeps the default, forcing interleave 1 was no better on the AVX2
host (float64 r = 32 sweeps 0.86x; float32 r = 20, which now takes the narrow copy,
product 0.85x with the single copy against the default). The copies add a row's products
in different orders in their dot products, so results can differ in the last bits between
copies; each copy is deterministic and independent of the thread count.
"""
import functools
import types as pytypes

import llvmlite.binding as llvm
import numba
import numpy as np
from numba.core.codegen import CPUCodeLibrary
from numba.core.compiler_lock import global_compiler_lock
from numba.core.itanium_mangler import mangle_identifier
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

VECTOR_BYTES = 32   # the row kernels' vector width: 4 float64 / 8 float32 lanes
NARROW_BYTES = 16   # the narrow copy's: 2 float64 / 4 float32 lanes


def target_features():
    """The CPU features Numba compiles for: ``NUMBA_CPU_FEATURES`` if set, else the host's
    (as Numba's own code generator takes them; none of the AVX ones under
    ``NUMBA_ENABLE_AVX=0``)."""
    if numba.config.CPU_FEATURES is not None:
        text = numba.config.CPU_FEATURES
    else:
        try:
            text = llvm.get_host_cpu_features().flatten()
        except RuntimeError:
            text = ""
    features = {f[1:] for f in text.split(",") if f.startswith("+")}
    if not numba.config.ENABLE_AVX:
        features = {f for f in features if not f.startswith("avx")}
    return features


# 32 vector registers of 64 bytes (AVX-512) rather than 16 of at most 32 (AVX2 and older)
WIDE_REGISTERS = "avx512f" in target_features()


def _width_attribute(nbytes):
    return f'"prefer-vector-width"="{8 * nbytes}"'


def _tag_functions(ir_module, attribute, owner):
    """Give LLVM's ``prefer-vector-width`` attribute (what clang's ``-mprefer-vector-width``
    sets) to the functions of ``ir_module`` that belong to the kernel being compiled: its
    own (their mangled names contain ``owner``, its mangled short name) and the
    bodies of its parallel loops. Helpers Numba compiles on the side (overloads such as
    ``np.empty``) are kept in memory and linked into later, unrelated compiles, so they stay
    untagged. llvmlite only accepts attribute names from its own list, so the string
    attribute goes into the set directly; should a future llvmlite store attributes
    differently, the kernels keep LLVM's own width (speed only)."""
    for fn in ir_module.functions:
        if fn.is_declaration or not (owner in fn.name or "numba_parfor_gufunc" in fn.name):
            continue
        try:
            set.add(fn.attributes, attribute)
        except (TypeError, AttributeError):
            return


class _RowDispatcher(CPUDispatcher):
    """Compiles a row kernel for ``vector_bytes``-wide vectors, and with LLVM's loop
    interleave count 1 when ``interleave_one`` (see the module docstring).

    The width attribute is added to the kernel's functions through a hook on Numba's code
    library that exists only under Numba's (re-entrant) compiler lock, during this compile:
    no other compile runs meanwhile, and forced compiles never nest (a RowKernel is a Python
    object, no jitted code can call it). The interleave count is an LLVM-global option, so
    it also reaches the helpers Numba happens to compile for the first time during this
    compile (small overloads; kept in memory for the process): a loop in one of those keeps
    interleave 1 wherever it is linked later. That changes speed only, never results. A
    load from the on-disk cache goes through ``compile`` too and is unaffected."""

    vector_bytes = VECTOR_BYTES
    interleave_one = False

    def compile(self, sig):
        with global_compiler_lock:
            add_ir_module = CPUCodeLibrary.add_ir_module
            attribute = _width_attribute(self.vector_bytes)
            owner = mangle_identifier(self.py_func.__qualname__.rsplit(".", 1)[-1])

            def tagged(library, ir_module):
                _tag_functions(ir_module, attribute, owner)
                return add_ir_module(library, ir_module)

            CPUCodeLibrary.add_ir_module = tagged
            if self.interleave_one:
                llvm.set_option("", "-force-vector-interleave=1")
            try:
                return super().compile(sig)
            finally:
                if self.interleave_one:
                    llvm.set_option("", "-force-vector-interleave=0")
                CPUCodeLibrary.add_ir_module = add_ir_module


class _InterleaveOneDispatcher(_RowDispatcher):
    interleave_one = True


class _NarrowDispatcher(_RowDispatcher):
    vector_bytes = NARROW_BYTES
    interleave_one = True


SCALAR_COST = 2   # a scalar remainder iteration, in vector operations (see copy_for)
INTERLEAVED_MIN_TRIPS = 4   # on a tie, fewer interleaved iterations go to the single copy


def _row_operations(r, lanes, step):
    """The cost of a row of r elements in a loop that takes ``step`` elements (``step //
    lanes`` vectors) per iteration: its vector operations plus SCALAR_COST per element left
    to the scalar remainder loop."""
    return (r // step) * (step // lanes) + SCALAR_COST * (r % step)


def copy_for(r, itemsize):
    """The compiled copy ("interleaved", "single" or "narrow") for factor rows of r elements
    of ``itemsize`` bytes: the one with the lowest ``_row_operations``, the wider and more
    interleaved on a tie (see the module docstring).

    A scalar remainder iteration counts as two vector operations: it has its own loads,
    arithmetic and loop test. Checked on the Zen 4 host with X^T W + KL numerator + 2 sweeps
    per call at r = 8-40 (15 ranks per dtype, three copies each): with the weight 1 the
    chosen copy was within 3% of the fastest at 23 of 30 ranks, with 2 at 26 (float64 r = 10
    narrow 1.15x, float32 r = 28 and 30 narrow 1.11x and 1.08x). The misses left are ties
    that the single copy won by 1.04-1.09x (float64 r = 24, 26; float32 r = 16, 18) while
    the interleaved one won the ties at float64 r = 32 and 40 (1.02-1.03x).

    Ties between the interleaved and the single copy therefore go to the single copy while
    the interleaved loop would make fewer than ``INTERLEAVED_MIN_TRIPS`` iterations. A later
    check of the ties (X^T W, KL numerator, 2 sweeps, interleaved / single time): single won
    at float32 r = 32 (1.04-1.10x on every kernel), 34 (1.06-1.12x), 48 (1.02-1.35x) and
    float64 r = 8, 16, 18 (KL numerator 1.10-1.14x; products and sweeps 0.95-1.05x);
    interleaved at float64 r = 40 (1.04x, 1.08x; KL 0.93x) and 48 (1.02x, 1.37x)."""
    lanes = max(1, VECTOR_BYTES // itemsize)
    narrow = max(1, NARROW_BYTES // itemsize)
    interleaved = _row_operations(r, lanes, 2 * lanes)
    single = _row_operations(r, lanes, lanes)
    if interleaved == single and r // (2 * lanes) < INTERLEAVED_MIN_TRIPS:
        interleaved += 1
    costs = (("interleaved", interleaved), ("single", single),
             ("narrow", _row_operations(r, narrow, narrow)))
    return min(costs, key=lambda c: c[1])[0]


def _compiled_copy(func, suffix, dispatcher):
    """``func`` compiled by ``dispatcher`` as a parallel, cached kernel; the copy's qualified
    name gets ``suffix`` so that each copy has its own on-disk cache entry."""
    copy = pytypes.FunctionType(func.__code__, func.__globals__, func.__name__,
                                func.__defaults__, func.__closure__)
    copy.__module__ = func.__module__
    copy.__qualname__ = func.__qualname__ + suffix
    disp = dispatcher(py_func=copy, locals={},
                      targetoptions=dict(nopython=True, parallel=True, **_OPTS))
    disp.enable_caching()
    return disp


class RowKernel:
    """A ``parallel_kernel`` compiled in three copies (``interleaved``, ``single``,
    ``narrow``; see the module docstring); a call picks one by the row length r of its first
    2-D array argument (the factor rows)."""

    def __init__(self, func):
        functools.update_wrapper(self, func)
        self.py_func = func
        # the copies' names (and so their cache entries) carry their widths: Numba renews a
        # cached kernel only when the kernel's own source file changes, not this one
        wide, narrow = 8 * VECTOR_BYTES, 8 * NARROW_BYTES
        self.interleaved = _compiled_copy(func, f"_v{wide}", _RowDispatcher)
        if not CAN_SCOPE_INTERLEAVE:
            self.single = self.narrow = self.interleaved
            return
        self.single = _compiled_copy(func, f"_v{wide}_interleave1", _InterleaveOneDispatcher)
        self.narrow = _compiled_copy(func, f"_v{narrow}_interleave1", _NarrowDispatcher)

    @property
    def signatures(self):
        """The signatures compiled so far, by any copy."""
        copies = {id(c): c for c in (self.interleaved, self.single, self.narrow)}
        return [sig for c in copies.values() for sig in c.signatures]

    def for_rows(self, rows):
        """The compiled kernel for factor rows like the 2-D array ``rows``."""
        return getattr(self, copy_for(rows.shape[1], rows.itemsize))

    @property
    def shared(self):
        """The copy for every rank (``interleaved``, LLVM's defaults), for calls that must
        not compile anything for their rank (the problems below
        ``_data.RANK_KERNEL_MIN_WORK``): ``for_rows`` may pick another copy, compiled on
        first use."""
        return self.interleaved

    def __reduce__(self):  # pickled by reference, like a module-level jitted function
        return _module_attribute, (self.__module__, self.__name__)

    def __call__(self, *args, by_rank=True, **kwargs):
        """The copy for the rows of the first 2-D array argument, or the ``shared`` copy
        where ``by_rank`` is False."""
        if not by_rank:
            return self.shared(*args, **kwargs)
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


class RankKernel:
    """A ``parallel_kernel`` compiled once per factor rank r: its last parameter is r as a
    literal integer (a compile-time constant to the code it calls, such as the IR of
    ``_kernels._fixed_rank``). A call passes every other argument; r is the row length of
    the first 2-D array among them. A Python ``bool`` argument is a literal too, so each of
    its values gets its own compiled code. Each (argument types, r) is compiled on first
    use and cached on disk like every kernel; later calls go straight to its compiled entry
    point (Numba's own dispatch would retype the literals on every call)."""

    def __init__(self, func):
        functools.update_wrapper(self, func)
        self.py_func = func
        self.dispatcher = numba.njit(parallel=True, **_COMMON)(func)
        self._entries = {}

    @property
    def signatures(self):
        return self.dispatcher.signatures

    def __reduce__(self):
        return _module_attribute, (self.__module__, self.__name__)

    def __call__(self, *args):
        r = next((a.shape[1] for a in args if getattr(a, "ndim", 0) == 2), None)
        if r is None:
            raise TypeError(f"{self.__name__}: no 2-D array argument (the factor rows)")
        key = (r,) + tuple(map(_type_key, args))
        entry = self._entries.get(key)
        if entry is None:
            sig = tuple(numba.types.literal(a) if isinstance(a, bool) else numba.typeof(a)
                        for a in args) + (numba.types.IntegerLiteral(r),)
            entry = self._entries[key] = self.dispatcher.compile(sig)
        return entry(*args, r)


def _type_key(a):
    """What decides an argument's Numba type, cheaper than ``numba.typeof`` (40 us per call
    of a six-array kernel): an array's dtype, rank and flags, a bool's value, else the
    Python type."""
    if isinstance(a, np.ndarray):
        f = a.flags
        return (a.dtype, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned)
    if isinstance(a, bool):
        return a                   # a literal: its value decides the compiled code
    return type(a)


def rank_kernel(func):
    """Compile ``func`` as a ``RankKernel`` (its last parameter: the rank, a literal)."""
    return RankKernel(func)
