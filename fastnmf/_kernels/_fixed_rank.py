"""CSR row loops, the per-row MU denominator and the HALS lane sweep, with the rank r fixed
when the kernel compiles (``_jit.rank_kernel``).

``gather_row_sum``: out[i] = sum over the nonzeros p of row i of data[p] * B[indices[p]], with
the r sums held in vector registers for the whole row: per nonzero, one load and one
multiply-add per vector piece of the gathered row, and out[i] stored once at the end. A loop
over a run-time r cannot do that (Numba has no register array of run-time length), so the
loop kernels of ``sparse.py`` load and store out[i] once per four nonzeros; and Numba code
with r a compile-time constant had LLVM scalarize the sums or vectorize over the nonzeros
instead (0.47-1.09x). So the row loop is written here directly in LLVM IR, as Numba
intrinsics, with the row cut into 32-byte vectors (the row kernels' width, ``_jit``), then
one 16-byte vector and single elements for what is left (``row_pieces``: float64 r = 10 is
two 4-lane vectors and one 2-lane one; float32 r = 20 two 8-lane and one 4-lane).
``kl_row_numerator`` does the same for the KL numerator, with F_i also kept in registers, so
each gathered row is loaded once for its dot product and its scaled add.

The nonzeros of a row are visited in order by one thread, so a row's result does not depend
on the thread count. The arithmetic carries the kernels' fast-math flags (``_jit.FASTMATH``:
LLVM may fuse and regroup a row's additions, the same way for every row and every run).

Measured on the Zen 4 host (2 threads, same process, alternating order; 50k x 20k with 2.1M
nonzeros at r = 10-50, 300k x 50k with 5.5M at r = 32) against the loop kernels, X Ht / X^T W:
float64 r = 10 1.27x / 1.49x, r = 20 1.09-1.21x / 1.38-1.50x, r = 32 1.13x / 1.31x, r = 50
1.41x / 1.25x; float32 r = 10 1.25x / 1.35x, r = 20 1.35x / 1.48x, r = 32 1.07x / 1.76x,
r = 50 1.29x / 1.35x; 300k r = 32 float64 1.11-1.17x / 1.06-1.12x, float32 1.27x / 1.08x
(there the gathered rows of W come from DRAM). KL numerator, sides W / H: float64 r = 10
1.44x / 1.59x, r = 20 1.38x / 1.55x, r = 32 1.18x / 1.26x, r = 50 1.23x / 1.30x; float32
1.23-1.45x / 1.27-1.53x; 300k 1.15x / 1.08x (float64), 1.24x / 1.05x (float32).

``mu_gram_row`` is the Frobenius MU step of one row with its denominator F_i @ gram in
registers. ``hals_lane_sweep`` is one HALS sweep over a group of rows held transposed, one
row per lane of a 64-byte vector (``lanes_in`` / ``lanes_out`` move a group in and out by
L x L shuffles); ``factor.hals_sweeps_lanes`` drives it and has its measurements.
"""
import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import VECTOR_BYTES
from ._prefetch import LINE, PREFETCH_DISTANCE
from ._vector_math import log_lanes
from ._vector_math import splat as _splat

MAX_ROW_BYTES = 512   # rows up to 16 32-byte sums (float64 r <= 64, float32 r <= 128)


def row_pieces(r, itemsize):
    """(first element, lanes) of the vectors a row of r elements is cut into: 32-byte ones,
    then a 16-byte one if at least that much is left, then single elements."""
    pieces, k = [], 0
    for width in (VECTOR_BYTES // itemsize, VECTOR_BYTES // 2 // itemsize, 1):
        width = max(width, 1)
        while r - k >= width:
            pieces.append((k, width))
            k += width
    return pieces


def fits(r, itemsize):
    """Whether rows of r elements of ``itemsize`` bytes take the fixed-rank kernels."""
    return 1 <= r and r * itemsize <= MAX_ROW_BYTES


def _prefetch(builder, address):
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
    builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


FLAGS = ("contract", "reassoc", "nsz", "arcp")   # _jit.FASTMATH, as LLVM instruction flags


def _arrays_ok(rank, *arrays):
    """r is a literal >= 1 and the arrays are 2-D, C-contiguous, of one float dtype."""
    return (isinstance(rank, types.IntegerLiteral) and rank.literal_value >= 1
            and all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
                    and a.dtype == arrays[0].dtype for a in arrays)
            and isinstance(arrays[0].dtype, types.Float))


def _typing_ok(rank, *rows):
    """``_arrays_ok`` for factor-row arrays whose rows also fit (``fits``)."""
    return (_arrays_ok(rank, *rows)
            and fits(rank.literal_value, rows[0].dtype.bitwidth // 8))


class _Rows:
    """IR helpers for rows of r elements of one float dtype, cut into ``row_pieces``: row
    addresses of C-contiguous 2-D arrays, loads and stores of a row as vector pieces, and
    per-piece accumulators."""

    def __init__(self, context, builder, dtype, r):
        self.context, self.builder = context, builder
        self.i64 = ir.IntType(64)
        self.i8p = ir.IntType(8).as_pointer()
        self.dtype = dtype
        self.itemsize = dtype.bitwidth // 8
        ftype = context.get_value_type(dtype)
        self.pieces = [(k * self.itemsize, ftype if w == 1 else ir.VectorType(ftype, w))
                       for k, w in row_pieces(r, self.itemsize)]
        self.span = r * self.itemsize

    def array(self, ary_type, value):
        """(first byte, row stride) of a C-contiguous 2-D array."""
        ary = self.context.make_array(ary_type)(self.context, self.builder, value)
        return (self.builder.bitcast(ary.data, self.i8p),
                cgutils.unpack_tuple(self.builder, ary.strides)[0])

    def row(self, array, i):
        """The address of row i (an intp) of an ``array`` pair."""
        return self.builder.gep(array[0], [self.builder.mul(i, array[1])])

    def pointer(self, row_address, offset, t):
        return self.builder.bitcast(self.builder.gep(row_address, [ir.Constant(self.i64,
                                                                                offset)]),
                                    t.as_pointer())

    def load_row(self, row_address):
        return [self.builder.load(self.pointer(row_address, o, t), align=self.itemsize)
                for o, t in self.pieces]

    def store_row(self, row_address, values):
        for (o, t), v in zip(self.pieces, values):
            self.builder.store(v, self.pointer(row_address, o, t), align=self.itemsize)

    def sums(self):
        """One zeroed accumulator (an alloca LLVM keeps in a register) per piece."""
        return [cgutils.alloca_once_value(self.builder, ir.Constant(t, None))
                for _, t in self.pieces]

    def splat(self, x, t):
        """Scalar x as piece type t (a vector of x, or x itself)."""
        return _splat(self.builder, x, t) if isinstance(t, ir.VectorType) else x

    def add_scaled(self, sums, x, g):
        """sums += x * g, piece by piece (x a scalar)."""
        b = self.builder
        for (_, t), acc, gv in zip(self.pieces, sums, g):
            b.store(b.fadd(b.load(acc), b.fmul(self.splat(x, t), gv, flags=FLAGS),
                           flags=FLAGS), acc)

    def load_into(self, sums, row_address):
        """sums = the pieces of the row at ``row_address``."""
        for acc, v in zip(sums, self.load_row(row_address)):
            self.builder.store(v, acc)

    def dot(self, f, g):
        """sum(f * g) over the row: the products of pieces of one width added pairwise into
        one vector, which is halved (adding the halves) down to the next width present and
        added to that width's sum, and so on down to one lane."""
        b = self.builder
        by_width = {}
        for (_, t), fv, gv in zip(self.pieces, f, g):
            by_width.setdefault(t.count if isinstance(t, ir.VectorType) else 1, []).append(
                b.fmul(fv, gv, flags=FLAGS))
        v = None
        for width in sorted(by_width, reverse=True):
            terms = by_width[width]
            while v is not None and (v.type.count if isinstance(v.type, ir.VectorType)
                                     else 1) > width:
                v = self._halve(v)
            if v is not None:
                terms = terms + [v]
            while len(terms) > 1:
                terms = [b.fadd(terms[k], terms[k + 1], flags=FLAGS) if k + 1 < len(terms)
                         else terms[k] for k in range(0, len(terms), 2)]
            v = terms[0]
        while isinstance(v.type, ir.VectorType) and v.type.count > 1:
            v = self._halve(v)
        if isinstance(v.type, ir.VectorType):
            v = b.extract_element(v, ir.Constant(ir.IntType(32), 0))
        return v

    def folded(self, f, g, width):
        """The products f * g of the row's pieces summed into one vector of ``width`` lanes
        (its lanes add up to f . g): wider pieces halved down to it, narrower ones
        zero-padded."""
        b = self.builder
        v = None
        for (_, t), fv, gv in zip(self.pieces, f, g):
            x = b.fmul(fv, gv, flags=FLAGS)
            if not isinstance(t, ir.VectorType):
                x = b.insert_element(ir.Constant(ir.VectorType(t, 1), None), x,
                                     ir.Constant(ir.IntType(32), 0))
            while x.type.count > width:
                x = self._halve(x)
            x = _resize(b, x, width)
            v = x if v is None else b.fadd(v, x, flags=FLAGS)
        return v

    def dots4(self, f, gs):
        """(f . gs[0], ..., f . gs[3]) as one 4-lane vector: each row's products folded to 4
        lanes, then the four reduced together (two rounds of two shuffles and an add per
        pair) instead of one reduction to a single lane per row."""
        b = self.builder
        v = [self.folded(f, g, 4) for g in gs]
        lanes4 = ir.VectorType(ir.IntType(32), 4)

        def pair(x, y, low, high):
            return b.fadd(b.shuffle_vector(x, y, ir.Constant(lanes4, low)),
                          b.shuffle_vector(x, y, ir.Constant(lanes4, high)), flags=FLAGS)
        a = pair(v[0], v[1], [0, 1, 4, 5], [2, 3, 6, 7])    # (x0+x2, x1+x3, y0+y2, y1+y3)
        c = pair(v[2], v[3], [0, 1, 4, 5], [2, 3, 6, 7])
        return pair(a, c, [0, 2, 4, 6], [1, 3, 5, 7])

    def _halve(self, v):
        """The sum of the low and the high half of vector v (a vector of half the lanes, or
        a scalar from two lanes)."""
        b = self.builder
        n = v.type.count // 2
        if n == 1:
            return b.fadd(b.extract_element(v, ir.Constant(ir.IntType(32), 0)),
                          b.extract_element(v, ir.Constant(ir.IntType(32), 1)), flags=FLAGS)
        lanes = ir.VectorType(ir.IntType(32), n)
        lo = b.shuffle_vector(v, v, ir.Constant(lanes, list(range(n))))
        hi = b.shuffle_vector(v, v, ir.Constant(lanes, list(range(n, 2 * n))))
        return b.fadd(lo, hi, flags=FLAGS)

class _RowCode(_Rows):
    """IR for one CSR row of a fixed-rank kernel: the row's loop over its nonzeros and the
    prefetch of the gathered rows of B."""

    def __init__(self, context, builder, signature, args, r, B, indices, data, start, end,
                 nnz, spill):
        """``B`` ... ``spill``: the positions of those arguments of the intrinsic."""
        tys = signature.args
        super().__init__(context, builder, tys[B].dtype, r)
        self.B = self.array(tys[B], args[B])
        self.indices = context.make_array(tys[indices])(context, builder, args[indices]).data
        self.data = context.make_array(tys[data])(context, builder, args[data]).data
        self.data_dtype = tys[data].dtype
        self.start, self.end, self.nnz = (context.cast(builder, args[k], tys[k], types.intp)
                                          for k in (start, end, nnz))
        self.spill = context.cast(builder, args[spill], tys[spill], types.boolean)

    def column(self, p):
        """indices[p] as a 64-bit integer (the operators validated 0 <= index < n)."""
        value = self.builder.load(self.builder.gep(self.indices, [p]))
        return self.builder.zext(value, self.i64) if value.type.width < 64 else value

    def value(self, p):
        """data[p] in the factors' dtype."""
        x = self.builder.load(self.builder.gep(self.data, [p]))
        return self.context.cast(self.builder, x, self.data_dtype, self.dtype)

    def over_nonzeros(self, body, batch=1, batch_body=None):
        """``body(p, address of B's row indices[p])`` for the row's nonzeros p in [start,
        end), in order, each after the hint for the gathered row of nonzero p +
        PREFETCH_DISTANCE (while < nnz: one hint per 64 bytes, plus its last byte where
        ``spill``). Grouping two or four nonzeros per trip (their dot products side by side,
        as the loop kernels do) measured no faster for the products and the KL numerator
        (0.82-1.17x); the KL loss, whose logarithms go four to a vector, takes runs of
        ``batch`` nonzeros to ``batch_body(p, [row addresses])`` first (their hints
        first), the rest of the row to ``body``."""
        counter = cgutils.alloca_once_value(self.builder, self.start)
        if batch > 1:
            self._loop(counter, batch, lambda p: self._batch(p, batch, batch_body))
        self._loop(counter, 1, lambda p: self._single(p, body))

    def _single(self, p, body):
        self._hint(p)
        body(p, self.row(self.B, self.column(p)))

    def _batch(self, p, batch, batch_body):
        b, i64 = self.builder, self.i64
        ps = [b.add(p, ir.Constant(i64, j)) for j in range(batch)]
        for q in ps:
            self._hint(q)
        batch_body(p, [self.row(self.B, self.column(q)) for q in ps])

    def _loop(self, counter, step, body):
        """While counter + step <= end: body(counter); counter += step."""
        b, i64 = self.builder, self.i64
        test_bb = b.append_basic_block("row.test")
        body_bb = b.append_basic_block("row.body")
        done_bb = b.append_basic_block("row.done")
        b.branch(test_bb)
        b.position_at_end(test_bb)
        p = b.load(counter)
        last = p if step == 1 else b.add(p, ir.Constant(i64, step - 1))
        b.cbranch(b.icmp_signed("<", last, self.end), body_bb, done_bb)
        b.position_at_end(body_bb)
        body(p)
        b.store(b.add(p, ir.Constant(i64, step)), counter)
        b.branch(test_bb)
        b.position_at_end(done_bb)

    def _hint(self, p):
        b, i64 = self.builder, self.i64
        ahead = b.add(p, ir.Constant(i64, PREFETCH_DISTANCE))
        with b.if_then(b.icmp_signed("<", ahead, self.nnz), likely=True):
            a = self.row(self.B, self.column(ahead))
            for offset in range(0, self.span, LINE):
                _prefetch(b, b.gep(a, [ir.Constant(i64, offset)]))
            with b.if_then(self.spill, likely=False):
                _prefetch(b, b.gep(a, [ir.Constant(i64, self.span - 1)]))


def _flag_ok(add):
    """``add`` is a literal boolean (a compile-time constant: ``_jit.RankKernel`` compiles
    each value of a bool argument apart). Read at run time it cost 5-18% (a branch per row
    in front of the sums)."""
    return isinstance(add, types.BooleanLiteral)


@intrinsic
def gather_row_sum(typingctx, out, i, B, indices, data, start, end, nnz, spill, add, rank):
    """out[i, :] = sum of data[p] * B[indices[p], :] for p in [start, end), added to out[i]
    where the boolean ``add`` holds (the sums then start from out[i]: the later column
    panels of ``CsrOperator``); r = ``rank`` (a literal integer) = B.shape[1] =
    out.shape[1]; B and out C-contiguous, of one dtype. Prefetch as in
    ``_RowCode.over_nonzeros``. No bounds checks: the caller validated the CSR arrays."""
    if not _typing_ok(rank, B, out) or not _flag_ok(add):
        return None
    sig = types.void(out, i, B, indices, data, start, end, nnz, spill, add, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        code = _RowCode(context, builder, signature, args, rank.literal_value, B=2, indices=3,
                        data=4, start=5, end=6, nnz=7, spill=8)
        row = context.cast(builder, args[1], t[1], types.intp)
        out_row = code.row(code.array(t[0], args[0]), row)
        sums = code.sums()
        if add.literal_value:
            code.load_into(sums, out_row)
        code.over_nonzeros(lambda p, g_row: code.add_scaled(sums, code.value(p),
                                                            code.load_row(g_row)))
        code.store_row(out_row, [builder.load(acc) for acc in sums])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def kl_row_numerator(typingctx, out, i, F, G, indices, data, start, end, nnz, spill, eps, add,
                     rank):
    """out[i, :] = sum over p in [start, end) of data[p] / max(F[i] . G[j], eps) * G[j]
    with j = indices[p] (the KL MU numerator's row), added to out[i] if ``add``
    (as in ``gather_row_sum``): F[i] is loaded once and kept in registers, each gathered row
    G[j] is loaded once for both its dot product and its scaled add. A NaN dot product
    counts as below eps, as in the loop kernel."""
    if not _typing_ok(rank, F, G, out) or eps != G.dtype or not _flag_ok(add):
        return None
    sig = types.void(out, i, F, G, indices, data, start, end, nnz, spill, eps, add, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        code = _RowCode(context, builder, signature, args, rank.literal_value, B=3, indices=4,
                        data=5, start=6, end=7, nnz=8, spill=9)
        row = context.cast(builder, args[1], t[1], types.intp)
        f = code.load_row(code.row(code.array(t[2], args[2]), row))
        out_row = code.row(code.array(t[0], args[0]), row)
        eps_v = args[10]
        sums = code.sums()
        if add.literal_value:
            code.load_into(sums, out_row)

        def body(p, g_row):
            g = code.load_row(g_row)
            wh = code.dot(f, g)
            wh = builder.select(builder.fcmp_ordered(">", wh, eps_v), wh, eps_v)
            code.add_scaled(sums, builder.fdiv(code.value(p), wh, flags=FLAGS), g)

        code.over_nonzeros(body)
        code.store_row(out_row, [builder.load(acc) for acc in sums])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def kl_row_loss(typingctx, i, F, G, indices, data, start, end, nnz, spill, eps, rank):
    """The KL loss terms of row i in float64: the sum over p in [start, end) of
    x log(x / wh) - x, x = data[p], wh = max(F[i] . G[indices[p]], eps) (a NaN dot product
    stays NaN), 0 for x = 0 (``sparse.kl_nonzero_term``). Four nonzeros at a time: their dot
    products reduced together (``_Rows.dots4``) and their logarithms as one vector
    (``_vector_math.log_lanes``); the rest of the row one at a time."""
    if not _typing_ok(rank, F, G) or eps != G.dtype:
        return None
    sig = types.float64(i, F, G, indices, data, start, end, nnz, spill, eps, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        b = builder
        code = _RowCode(context, builder, signature, args, rank.literal_value, B=2, indices=3,
                        data=4, start=5, end=6, nnz=7, spill=8)
        row = context.cast(builder, args[0], t[0], types.intp)
        f = code.load_row(code.row(code.array(t[1], args[1]), row))
        eps_v = args[9]
        f64 = ir.DoubleType()
        v4 = ir.VectorType(f64, 4)
        ftype = context.get_value_type(code.dtype)

        def wide(x, vector):
            return x if code.dtype.bitwidth == 64 else b.fpext(x, v4 if vector else f64)

        def value64(p):
            x = b.load(b.gep(code.data, [p]))
            return context.cast(b, x, code.data_dtype, types.float64)

        def terms(x, wh, log):
            """x log(x / wh) - x, 0 where x = 0 (the ratio 1 there: log 1 = 0)."""
            one = ir.Constant(x.type, [1.0] * 4 if isinstance(x.type, ir.VectorType) else 1.0)
            zero = ir.Constant(x.type, None)
            ratio = b.select(b.fcmp_ordered("==", x, zero), one, b.fdiv(x, wh))
            return b.fsub(b.fmul(x, log(ratio)), x)

        total4 = cgutils.alloca_once_value(b, ir.Constant(v4, None))
        total = cgutils.alloca_once_value(b, ir.Constant(f64, None))

        def batch_body(p, g_rows):
            wh = code.dots4(f, [code.load_row(a) for a in g_rows])
            eps4 = _splat(b, eps_v, ir.VectorType(ftype, 4))
            wh = wide(b.select(b.fcmp_ordered("<", wh, eps4), eps4, wh), True)
            x = ir.Constant(v4, ir.Undefined)
            for j in range(4):
                x = b.insert_element(x, value64(b.add(p, ir.Constant(code.i64, j))),
                                     ir.Constant(ir.IntType(32), j))
            b.store(b.fadd(b.load(total4), terms(x, wh, lambda v: log_lanes(context, b, v))),
                    total4)

        scalar_log = context.get_function(math.log, types.float64(types.float64))

        def body(p, g_row):
            wh = code.dot(f, code.load_row(g_row))
            wh = wide(b.select(b.fcmp_ordered("<", wh, eps_v), eps_v, wh), False)
            b.store(b.fadd(b.load(total), terms(value64(p), wh,
                                                lambda v: scalar_log(b, [v]))), total)

        code.over_nonzeros(body, 4, batch_body)
        t4 = b.load(total4)
        lanes = [b.extract_element(t4, ir.Constant(ir.IntType(32), j)) for j in range(4)]
        return b.fadd(b.fadd(b.fadd(lanes[0], lanes[1]), b.fadd(lanes[2], lanes[3])),
                      b.load(total))

    return sig, codegen


# the per-row denominator F_i @ gram beats one small GEMM per 64-row block up to these ranks
# (float64 / float32; Zen 4 host, 50,000 rows, 2 threads: float64 r = 8-28 1.06-2.01x,
# r = 32 0.69x at 300,000 rows; float32 r = 8-20 1.07-2.96x, r = 24 0.94x, r = 28 0.70x)
MU_ROW_MAX_RANK = {8: 24, 4: 20}


@intrinsic
def mu_gram_row(typingctx, F, i, num, gram, l1, l2, tiny, normal, rank):
    """The Frobenius MU step of row i of F with r = ``rank`` fixed: den = F_i @ gram (r
    multiply-adds of gram's rows per piece, in two chains), then per entry
    f <- f * num / max(den + l1 + l2 f, tiny), 0 below ``normal`` (``factor.mu_entry`` with
    gamma = 1; a NaN stays NaN). F, num, gram C-contiguous, of one dtype."""
    if not _typing_ok(rank, F, num, gram) or not all(s == F.dtype
                                                     for s in (l1, l2, tiny, normal)):
        return None
    sig = types.void(F, i, num, gram, l1, l2, tiny, normal, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        r = rank.literal_value
        rows = _Rows(context, builder, F.dtype, r)
        row = context.cast(builder, args[1], t[1], types.intp)
        f_row = rows.row(rows.array(t[0], args[0]), row)
        num_row = rows.row(rows.array(t[2], args[2]), row)
        gram = rows.array(t[3], args[3])
        f_scalars = builder.bitcast(f_row, context.get_value_type(F.dtype).as_pointer())
        chains = [rows.sums(), rows.sums()]
        for k in range(r):
            fk = builder.load(builder.gep(f_scalars, [ir.Constant(rows.i64, k)]))
            rows.add_scaled(chains[k % 2], fk,
                            rows.load_row(rows.row(gram, ir.Constant(rows.i64, k))))
        l1_v, l2_v, tiny_v, normal_v = args[4:8]
        new = []
        for (_, ty), a, b, f, n in zip(rows.pieces, chains[0], chains[1],
                                       rows.load_row(f_row), rows.load_row(num_row)):
            den = builder.fadd(builder.load(a), builder.load(b), flags=FLAGS)
            d = builder.fadd(builder.fadd(den, rows.splat(l1_v, ty), flags=FLAGS),
                             builder.fmul(rows.splat(l2_v, ty), f, flags=FLAGS), flags=FLAGS)
            tiny_s = rows.splat(tiny_v, ty)
            d = builder.select(builder.fcmp_ordered("<", d, tiny_s), tiny_s, d)
            v = builder.fmul(f, builder.fdiv(n, d, flags=FLAGS), flags=FLAGS)
            new.append(builder.select(builder.fcmp_ordered("<", v, rows.splat(normal_v, ty)),
                                      ir.Constant(ty, None), v))
        rows.store_row(f_row, new)
        return context.get_dummy_value()

    return sig, codegen


LANE_BYTES = 64   # one vector of the HALS lane sweep: 8 float64 / 16 float32 rows
EXACT = ("contract", "nsz", "arcp")   # FLAGS less reassoc: the sweep's sums keep their order


def lanes(itemsize):
    """Rows swept side by side by ``hals_lane_sweep`` (one per vector lane)."""
    return LANE_BYTES // itemsize


def _transpose(builder, v):
    """The L x L block whose rows are the L-lane vectors ``v``, transposed (its columns as
    vectors): log2(L) rounds of two-vector shuffles; round h pairs rows i and i + h and
    swaps their off-diagonal h x h sub-blocks."""
    width = len(v)
    lanes_t = ir.VectorType(ir.IntType(32), width)
    h = 1
    while h < width:
        low = [j if not j & h else width + j - h for j in range(width)]
        high = [j + h if not j & h else width + j for j in range(width)]
        nxt = list(v)
        for i in range(width):
            if not i & h:
                nxt[i] = builder.shuffle_vector(v[i], v[i + h], ir.Constant(lanes_t, low))
                nxt[i + h] = builder.shuffle_vector(v[i], v[i + h], ir.Constant(lanes_t, high))
        v = nxt
        h *= 2
    return v


def _resize(builder, v, count):
    """Vector v cut or zero-padded to ``count`` lanes."""
    have = v.type.count
    if have == count:
        return v
    zero = ir.Constant(v.type, None)
    mask = [j if j < have else have for j in range(count)]   # lane ``have`` of zero: 0
    return builder.shuffle_vector(v, zero, ir.Constant(ir.VectorType(ir.IntType(32), count),
                                                       mask))


class _Lanes(_Rows):
    """IR helpers for a group of L rows of a (row-major) factor and its transposed (r, L)
    copy: the row block is cut into column blocks of up to L entries, each moved as one
    L x L transpose of vectors."""

    def __init__(self, context, builder, dtype, r):
        super().__init__(context, builder, dtype, r)
        self.width = lanes(self.itemsize)
        self.ftype = context.get_value_type(dtype)
        self.vt = ir.VectorType(self.ftype, self.width)

    def blocks(self, r):
        return [(q0, min(self.width, r - q0)) for q0 in range(0, r, self.width)]

    def lane_vector(self, base, q):
        return self.pointer(base, q * self.width * self.itemsize, self.vt)

    def piece(self, row_address, q0, w):
        t = self.ftype if w == 1 else ir.VectorType(self.ftype, w)
        return self.pointer(row_address, q0 * self.itemsize, t)

    def rows_in(self, array, i0, r):
        """The column blocks of rows i0 .. i0 + L - 1 of ``array``, transposed: for each
        block (q0, w), the w vectors of entries q0 .. q0 + w - 1 over the L rows."""
        b = self.builder
        out = []
        for q0, w in self.blocks(r):
            v = []
            for ll in range(self.width):
                row = self.row(array, b.add(i0, ir.Constant(self.i64, ll)))
                x = b.load(self.piece(row, q0, w), align=self.itemsize)
                if w == 1:
                    x = b.insert_element(ir.Constant(ir.VectorType(self.ftype, 1), None), x,
                                         ir.Constant(ir.IntType(32), 0))
                v.append(_resize(b, x, self.width))
            out.extend(_transpose(b, v)[:w])
        return out

    def rows_out(self, array, i0, r, vectors):
        """Store ``vectors`` (r lane vectors, as ``rows_in`` gives them) back as rows i0 ..
        i0 + L - 1 of ``array``."""
        b = self.builder
        zero = ir.Constant(self.vt, None)
        for q0, w in self.blocks(r):
            t = _transpose(b, vectors[q0:q0 + w] + [zero] * (self.width - w))
            for ll in range(self.width):
                row = self.row(array, b.add(i0, ir.Constant(self.i64, ll)))
                x = _resize(b, t[ll], w) if w > 1 else b.extract_element(
                    t[ll], ir.Constant(ir.IntType(32), 0))
                b.store(x, self.piece(row, q0, w), align=self.itemsize)


@intrinsic
def hals_lane_sweep(typingctx, Ft, Pt, Q, active, change, normal, rank):
    """One HALS sweep over L = ``lanes`` rows at once, held transposed: Ft[q, l] is entry q
    of the group's row l, so Ft[q] is one vector of L rows (a vector lane per row) and the
    sweep needs no horizontal sums. Pt holds P - l1 the same way; Ft, Pt are (r, L), Q is
    (r, r), all C-contiguous, of one dtype; ``active`` (L booleans), ``change`` (L).

    For k = 0 .. r-1, with r = ``rank`` fixed (the sweep is straight-line code, the rows in
    registers): d = sum_q Q[k, q] Ft[q] (the entries before k already updated), then
    Ft[k] <- Ft[k] + (Pt[k] - d) / Q[k, k], 0 below ``normal`` (a NaN stays NaN), except in
    lanes not ``active`` (left as they were). change[l] = the sum of row l's squared
    changes. Q[k, k] below ``normal`` (including <= 0) skips coordinate k, as in
    ``factor.hals_sweeps_loop`` (its reciprocal would overflow); a NaN Q[k, k] does not (the
    NaN shows in the result). d adds the terms of the entries not yet updated first and the
    one updated last (q = k - 1) at the end, so a coordinate waits on its predecessor for
    one multiply-add only; the sums keep that order (no reassociation). Dividing by Q[k, k]
    is a multiplication by its reciprocal. No bounds checks: the caller allocates the
    buffers."""
    if not (_arrays_ok(rank, Ft, Pt, Q)
            and isinstance(active, types.Array) and active.dtype == types.boolean
            and isinstance(change, types.Array) and change.dtype == Ft.dtype
            and isinstance(normal, types.Float)):
        return None
    sig = types.void(Ft, Pt, Q, active, change, normal, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        r = rank.literal_value
        b = builder
        g = _Lanes(context, builder, Ft.dtype, r)
        ftype, width, vt = g.ftype, g.width, g.vt
        # C-contiguous (r, L) and (r, r): every address is a constant offset from the data
        ft_a, pt_a, q_a = (g.array(t[k], args[k])[0] for k in range(3))

        def vector(array, q):
            return b.load(g.lane_vector(array, q), align=g.itemsize)

        def q_entry(k, q):
            return b.load(g.pointer(q_a, (k * r + q) * g.itemsize, ftype))

        def term(acc, k, q):
            x = b.fmul(_splat(b, q_entry(k, q), vt), f[q], flags=EXACT)
            return x if acc is None else b.fadd(acc, x, flags=EXACT)

        def data(k):
            return context.make_array(t[k])(context, builder, args[k]).data

        byte_vector = ir.VectorType(ir.IntType(8), width)
        flags = b.load(b.bitcast(data(3), byte_vector.as_pointer()), align=1)
        live = b.icmp_unsigned("!=", flags, ir.Constant(byte_vector, None))
        zero = ir.Constant(vt, None)
        normal_s = context.cast(b, args[5], t[5], Ft.dtype)
        normal_v = _splat(b, normal_s, vt)
        f = [vector(ft_a, q) for q in range(r)]
        total = zero
        for k in range(r):
            qkk = q_entry(k, k)
            ok = b.fcmp_unordered(">=", qkk, normal_s)   # as hals_sweeps_loop: NaN goes on
            inv = _splat(b, b.fdiv(ir.Constant(ftype, 1.0), qkk), vt)
            d = None
            for q in range(k, r):              # entries not updated yet: ready at once
                d = term(d, k, q)
            earlier = None
            for q in range(k - 1):             # updated by this sweep, in order
                earlier = term(earlier, k, q)
            if earlier is not None:
                d = b.fadd(d, earlier, flags=EXACT)
            if k:
                d = term(d, k, k - 1)          # the entry updated just before
            new = b.fadd(f[k], b.fmul(b.fsub(vector(pt_a, k), d, flags=EXACT), inv,
                                      flags=EXACT), flags=EXACT)
            new = b.select(b.fcmp_ordered("<", new, normal_v), zero, new)
            new = b.select(ok, b.select(live, new, f[k]), f[k])
            step = b.fsub(new, f[k], flags=EXACT)
            total = b.fadd(total, b.fmul(step, step, flags=EXACT), flags=EXACT)
            f[k] = new
        for q in range(r):
            b.store(f[q], g.lane_vector(ft_a, q), align=g.itemsize)
        b.store(total, b.bitcast(data(4), vt.as_pointer()), align=g.itemsize)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lanes_in(typingctx, Ft, Pt, F, P, i0, l1, rank):
    """Ft = rows i0 .. i0 + L - 1 of F transposed, (r, L); Pt the same of P, less l1
    (``hals_lane_sweep``'s layout). All C-contiguous, of one dtype; F, P have those rows."""
    if not _arrays_ok(rank, Ft, Pt, F, P) or l1 != F.dtype:
        return None
    sig = types.void(Ft, Pt, F, P, i0, l1, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        r = rank.literal_value
        g = _Lanes(context, builder, F.dtype, r)
        i0_v = context.cast(builder, args[4], t[4], types.intp)
        l1_v = _splat(builder, args[5], g.vt)
        ft, pt = g.array(t[0], args[0])[0], g.array(t[1], args[1])[0]
        for q, v in enumerate(g.rows_in(g.array(t[2], args[2]), i0_v, r)):
            builder.store(v, g.lane_vector(ft, q), align=g.itemsize)
        for q, v in enumerate(g.rows_in(g.array(t[3], args[3]), i0_v, r)):
            builder.store(builder.fsub(v, l1_v, flags=EXACT), g.lane_vector(pt, q),
                          align=g.itemsize)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lanes_out(typingctx, F, i0, Ft, rank):
    """Rows i0 .. i0 + L - 1 of F = Ft transposed (the inverse of ``lanes_in``)."""
    if not _arrays_ok(rank, F, Ft):
        return None
    sig = types.void(F, i0, Ft, rank)

    def codegen(context, builder, signature, args):
        t = signature.args
        r = rank.literal_value
        g = _Lanes(context, builder, F.dtype, r)
        i0_v = context.cast(builder, args[1], t[1], types.intp)
        ft = g.array(t[2], args[2])[0]
        vectors = [builder.load(g.lane_vector(ft, q), align=g.itemsize) for q in range(r)]
        g.rows_out(g.array(t[0], args[0]), i0_v, r, vectors)
        return context.get_dummy_value()

    return sig, codegen
