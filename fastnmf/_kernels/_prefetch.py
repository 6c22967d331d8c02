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
def _prefetch_item(typingctx, arr, i, k):
    """llvm.prefetch(read, high locality, data cache) of the address of arr[i, k]."""
    sig = types.void(arr, i, k)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        inds = [context.cast(builder, args[n], signature.args[n], types.intp) for n in (1, 2)]
        ptr = cgutils.get_item_pointer2(context, builder, data=ary.data,
                                        shape=cgutils.unpack_tuple(builder, ary.shape),
                                        strides=cgutils.unpack_tuple(builder, ary.strides),
                                        layout=aryty.layout, inds=inds)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@inline_helper
def prefetch_row(B, j):
    """Hint every cache line of row j of the C-contiguous 2-D array B."""
    r = B.shape[1]
    for k in range(0, r, LINE // B.itemsize):
        _prefetch_item(B, j, k)
    _prefetch_item(B, j, r - 1)


@inline_helper
def take_four(B, indices, p, nnz):
    """The column indices of nonzeros p .. p+3 as unsigned integers (see ``sparse.py``),
    after hinting the rows of B of the four nonzeros ``PREFETCH_DISTANCE`` later (the CSR
    kernels consume nonzeros four at a time; no hint near the end of the matrix). ``p`` and
    ``nnz`` are ``np.uint64``."""
    q = p + U(PREFETCH_DISTANCE)
    if q + U(3) < nnz:
        for t in range(q, q + U(4)):
            prefetch_row(B, indices[t])
    return U(indices[p]), U(indices[p + U(1)]), U(indices[p + U(2)]), U(indices[p + U(3)])
