"""A software prefetch hint for the factor rows that CSR kernels gather.

A CSR product reads, for each nonzero (i, j), the whole row j of a dense factor. Those rows
are scattered over megabytes (the factor does not fit in L2), and in float64 a row of r = 20
spans three cache lines. Asking for the row of the nonzero ``PREFETCH_DISTANCE`` positions
ahead lets its lines arrive while the current ones are used: X^T W on 2.24M nonzeros went from
17.5 to 10.3 ms (median, 2 threads, float64). With one nonzero per output update the hints
slowed float32 down (its loop was bound by that update chain, not by the loads); once the
kernels took four nonzeros per update they pay in float32 too (X^T W 12.4 -> 10.1 ms at 2
threads, 25.3 -> 14.9 ms at 1). A prefetch never faults and never changes a result.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import inline_helper

U = np.uint64             # the kernels' index type (see sparse.py)
PREFETCH_DISTANCE = 16   # nonzeros ahead (8-32 measured alike; 4 too short)
LINE = 64                # bytes per cache line


@intrinsic
def _row_address(typingctx, arr, i):
    """The address of arr[i, 0] (a C-contiguous 2-D array) as an unsigned integer."""
    sig = types.uintp(arr, i)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        row = context.cast(builder, args[1], signature.args[1], types.intp)
        stride = cgutils.unpack_tuple(builder, ary.strides)[0]
        base = builder.ptrtoint(ary.data, context.get_value_type(types.uintp))
        return builder.add(base, builder.mul(row, stride))

    return sig, codegen


@intrinsic
def _prefetch_address(typingctx, address):
    """llvm.prefetch(read, high locality, data cache) of the byte at ``address``."""
    sig = types.void(address)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.inttoptr(args[0], i8p), ir.Constant(i32, 0),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _data_address(typingctx, arr):
    """The address of the first element of ``arr`` as an unsigned integer."""
    sig = types.uintp(arr)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, context.get_value_type(types.uintp))

    return sig, codegen


@inline_helper
def spills(B, span):
    """Whether some row of B can touch one line more than the ``ceil(span / 64)`` lines that
    hints 64 bytes apart from its start reach. Row starts lie at multiples of g bytes past a
    line (g: the lowest set bit of the row length, the array's offset into its line and 64),
    so the latest start is 64 - g bytes into a line. With the fit's line-aligned factors this
    is False for most ranks (e.g. float64 r = 10, 20, 32, 50; float32 r = 20, 32) and True
    for e.g. float32 r = 12 (48-byte rows). Loop invariant: LLVM computes it once per call."""
    g = span | (_data_address(B) & U(LINE - 1)) | U(LINE)
    g = g & (~g + U(1))
    lines = (span + U(LINE - 1)) // U(LINE)
    return U(LINE) - g + span - U(1) >= lines * U(LINE)


@inline_helper
def prefetch_row(B, j):
    """Hint every cache line of row j of the C-contiguous 2-D array B: one hint per 64 bytes
    from the row's start, and its last byte where a row can spill into one more line
    (``spills``). Straight-line hints off one row address, with the row's byte length loop
    invariant: the former loop over element offsets recomputed its trip count per row from
    the array's run-time ``itemsize`` (a division) and cost ~5 instructions per hint."""
    span = U(B.shape[1]) * U(B.itemsize)
    if span == U(0):
        return
    a = _row_address(B, j)
    _prefetch_address(a)
    if span > U(LINE):
        _prefetch_address(a + U(LINE))
        if span > U(2 * LINE):
            _prefetch_address(a + U(2 * LINE))
            off = U(3 * LINE)
            while off < span:
                _prefetch_address(a + off)
                off += U(LINE)
    if spills(B, span):
        _prefetch_address(a + span - U(1))


@inline_helper
def take_four(B, indices, p, nnz):
    """The column indices of nonzeros p .. p+3 as unsigned integers (see ``sparse.py``),
    after hinting the rows of B of the four nonzeros ``PREFETCH_DISTANCE`` later (the CSR
    kernels consume nonzeros four at a time; no hint near the end of the matrix). ``p`` and
    ``nnz`` are ``np.uint64``."""
    q = p + U(PREFETCH_DISTANCE)
    if q + U(3) < nnz:
        for t in range(q, q + U(4)):   # a loop, not four calls: one inlined copy to compile
            prefetch_row(B, indices[t])
    return U(indices[p]), U(indices[p + U(1)]), U(indices[p + U(2)]), U(indices[p + U(3)])
