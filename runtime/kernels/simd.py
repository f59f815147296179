"""AVX2 integer GEMM micro-kernels written as LLVM IR through Numba intrinsics.

Numba does not emit ``vpmaddubsw`` or ``vpmaddwd`` from Python code; here they are called directly
(``llvm.x86.avx2.pmadd.ub.sw``, ``llvm.x86.avx2.pmadd.wd``) inside register-blocked micro-kernels
built with llvmlite, and driven by ordinary Numba loops.

Contract (0 LSB; tests/runtime/test_simd.py)::

    gemm_u8s8(a, pack_b(bt), pair_saturation=False)[m, n] = sum_k a[m, k] * bt[n, k]
    gemm_u8s8(a, pack_b(bt), pair_saturation=True)[m, n]  = sum_j sat16(a[m, 2j]*bt[n, 2j] + a[m, 2j+1]*bt[n, 2j+1])
    gemm_exact(a, pack_b(bt))[m, n]                        = sum_k a[m, k] * bt[n, k]

with a [M, K] uint8 (pair mode) or uint8/int8/int16 (exact), bt [N, K] int8 (pair mode) or int16
range (exact), int32 results; an odd K pairs the last product with 0, as
:func:`runtime.kernels.mac.gemm_raw` and ONNX Runtime's AVX2 u8 x s8 kernels do.

Kernels (both keep a tile of C in registers and read each A value once per tile of columns):

- **pair** (u8 x s8, ONNX Runtime's AVX2 arithmetic): 4 bytes a[m, 4g:4g+4] are broadcast to the 8
  int32 lanes; B is packed so that lane c of a vector holds bt[n0 + c, 4g:4g+4]; ``vpmaddubsw``
  gives, per column, sat16(a0*b0 + a1*b1) and sat16(a2*b2 + a3*b3) -- the pair saturation itself,
  pairs (2j, 2j+1) --, ``vpmaddwd`` with ones adds the two into int32 and ``vpaddd`` accumulates.
  A tile is 4 rows x 16 columns (8 accumulators): 32 MACs per ``vpmaddubsw``.
- **exact** (any 8-bit A, int16-range A and B): A's 4 values (zero- or sign-extended to int16) are
  broadcast as the int32 lanes (a0, a1), (a2, a3), (a0, a1), ...; B is packed as int16 with column c
  of a vector in lanes 2c, 2c+1 holding (b0, b1), (b2, b3); ``vpmaddwd`` gives a0*b0 + a1*b1 and
  a2*b2 + a3*b3 per column exactly in int32 (16 MACs per instruction), adjacent lanes are added
  once per tile. A tile is 2 rows x 16 columns (8 accumulators; 3 rows spill registers).

Layout and threads: B is packed once (:func:`pack_b`, plan time) in panels of 16 columns; A is
read in place. Work is split in blocks of BLOCK_ROWS rows of A; in a block, panel by panel (the
panel stays in L1) and tile by tile. ``transpose=True`` stores C^T [N, M] directly (each column of a
tile as consecutive int32), the [channels, pixels] layout a convolution's epilogue reads when A's
rows are pixels. With numba.get_num_threads() > 1 and a large product, contiguous ranges of blocks
run on Python threads (the kernels release the GIL): a Numba parallel region around the intrinsic
calls doubled the cold compile time (measured 13 s against 6 s for the four specializations).

Exactness: every pair sum and accumulator is an int32; :func:`gemm_exact` checks
K * max|a| * max|b| < 2^31 and :func:`gemm_u8s8` K * 255 * max|b| < 2^31 (the accumulators then
never wrap), and refuse beyond. K is cut into groups of 4 against zero-padded B: a row whose last
group ends inside A's memory reads the whole group (the extra elements meet zeros: 0 in either
mode, a pair (x, pad) saturates as x alone); the tile holding A's last bytes loads its partial group
element by element (branch-free: clamped addresses, zeroed values), so nothing past A is read
(tests: an A ending at a PROT_NONE page). A is read in place (any row stride, contiguous rows).
Partial row tiles repeat their last row (identical values stored twice); partial column tiles (and
transposed partial row tiles) go through a small scratch tile.

Measured (benchmarks/simd_gemm.py, 1 thread, AMD EPYC Zen 3, loaded): pair ~55-85 GMAC/s, exact
~30-50 GMAC/s on large products, about ONNX Runtime's MatMulInteger; the pair kernel is bound by the
vector pipes (8 ``vpmaddubsw`` + 8 ``vpmaddwd`` + 8 ``vpaddd`` per 256 MACs), the exact one by its 16
``vpmaddwd`` + 16 ``vpaddd``; a K = 27 GEMM is bound by its int32 output stores.

Hardware: the jitted functions contain AVX2 instructions; they are only called when
:func:`available` says the CPU has AVX2 and Numba compiles for it, and the public functions raise
UnsupportedError otherwise (callers test :func:`available` and take the numpy/BLAS paths).
"""
from __future__ import annotations

import functools
import platform
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ..errors import HwsimError, UnsupportedError
from ..numba_config import jit

PAIR_ROWS = 4  # rows of a pair-mode tile (6 spills on AVX2's 16 registers)
EXACT_ROWS = 2  # rows of an exact-mode tile (3 spills)
PANEL = 16  # columns of a full tile; B is packed in panels of 16 columns (the last one 8 when N % 16 <= 8)
BLOCK_ROWS = 96  # rows of A per block (a multiple of both tile heights): A block in L2, a B panel in L1
INT32_LIMIT = 1 << 31
PARALLEL_MIN_MACS = 1 << 22  # smaller products run on the calling thread alone

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


# ---------------------------------------------------------------------------------------------
# hardware check
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def available() -> bool:
    """True when the kernels may run: an x86-64 CPU that reports AVX2 (runtime.target.cpu_flags),
    Numba compiling for the host CPU (or with '+avx2' in NUMBA_CPU_FEATURES), and the JIT enabled
    (the micro-kernels are LLVM IR: under NUMBA_DISABLE_JIT=1 there is no Python version of them)."""
    from ..target import cpu_flags

    if numba.config.DISABLE_JIT:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if "avx2" not in cpu_flags():
        return False
    cpu_name = numba.config.CPU_NAME
    if cpu_name not in (None, "", "host"):
        return "+avx2" in (numba.config.CPU_FEATURES or "")
    return True


def _require():
    if not available():
        raise UnsupportedError("runtime.kernels.simd: this CPU (or Numba's target CPU) has no AVX2; "
                               "check simd.available() and use runtime.kernels.mac instead")


# ---------------------------------------------------------------------------------------------
# LLVM IR of the micro-kernels
# ---------------------------------------------------------------------------------------------
def _splat(builder, value, count):
    vec_t = ir.VectorType(value.type, count)
    v = builder.insert_element(ir.Constant(vec_t, ir.Undefined), value, _I32(0))
    zeros = ir.Constant(ir.VectorType(_I32, count), [0] * count)
    return builder.shuffle_vector(v, ir.Constant(vec_t, ir.Undefined), zeros)


def _byte_ptr(context, builder, aryty, ary, byte_offset):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(builder.bitcast(data, _I8.as_pointer()), [byte_offset])


def _load(builder, ptr_i8, ty):
    """An unaligned load of ``ty`` at the byte pointer."""
    return builder.load(builder.bitcast(ptr_i8, ty.as_pointer()), align=1)


def _load_group(builder, row_ptr, byte_off, esize, rem=None):
    """The 4 A elements of a group as one integer of 4*esize bytes; with ``rem`` (1..3 valid elements)
    only those are read (clamped addresses, zeroed values: nothing past the row is touched)."""
    word_t = _I32 if esize == 1 else _I64
    base = builder.gep(row_ptr, [byte_off])
    if rem is None:
        return _load(builder, base, word_t)
    elem_t = _I8 if esize == 1 else _I16
    word = word_t(0)
    for t in range(4):
        ok = builder.icmp_unsigned("<", _I64(t), rem)
        off = builder.select(ok, _I64(t * esize), _I64(0))
        v = builder.zext(_load(builder, builder.gep(base, [off]), elem_t), word_t)
        v = builder.select(ok, v, word_t(0))
        word = builder.or_(word, builder.shl(v, word_t(8 * esize * t)))
    return word


def _a_vector(builder, word, mode, esize, signed):
    """The broadcast A operand of one group: <32 x i8> (pair) or <16 x i16> (exact)."""
    if mode == "pair":
        return builder.bitcast(_splat(builder, word, 8), ir.VectorType(_I8, 32))
    if esize == 2:
        return builder.bitcast(_splat(builder, word, 4), ir.VectorType(_I16, 16))
    b16 = builder.bitcast(_splat(builder, word, 4), ir.VectorType(_I8, 16))
    ext = builder.sext if signed else builder.zext
    return ext(b16, ir.VectorType(_I16, 16))


def _tile_codegen(mode, rows_max, nvec, esize, signed, transposed):
    """codegen(context, builder, sig, args) of one micro-kernel (see :func:`_make_tile`)."""
    v8i32 = ir.VectorType(_I32, 8)
    v16i16 = ir.VectorType(_I16, 16)
    v32i8 = ir.VectorType(_I8, 32)

    def codegen(context, builder, sig, args):
        a, a_off, lda, steps, rem, b, b_off, ldb, c, c_off, ldc, rows = args
        aty, bty, cty = sig.args[0], sig.args[5], sig.args[8]
        mod = builder.module
        madd_ubs = cgutils.get_or_insert_function(mod, ir.FunctionType(v16i16, [v32i8, v32i8]),
                                                  "llvm.x86.avx2.pmadd.ub.sw")
        madd_wd = cgutils.get_or_insert_function(mod, ir.FunctionType(v8i32, [v16i16, v16i16]),
                                                 "llvm.x86.avx2.pmadd.wd")
        a_base = _byte_ptr(context, builder, aty, a, a_off)
        b_base = _byte_ptr(context, builder, bty, b, b_off)
        c_base = _byte_ptr(context, builder, cty, c, c_off)
        last = builder.sub(rows, _I64(1))
        row_a, row_c = [], []
        for r in range(rows_max):
            rr = builder.select(builder.icmp_signed("<", _I64(r), rows), _I64(r), last)
            row_a.append(builder.gep(a_base, [builder.mul(rr, lda)]))
            row_c.append(builder.gep(c_base, [builder.mul(rr, ldc)]))
        ones = ir.Constant(v16i16, [1] * 16)
        zero = ir.Constant(v8i32, [0] * 8)
        group_bytes = 4 * esize

        def step(accs, g, rem_or_none):
            b_step = builder.gep(b_base, [builder.mul(g, ldb)])
            bvecs = []
            for j in range(nvec):
                ptr = builder.gep(b_step, [_I64(32 * j)])
                bvecs.append(_load(builder, ptr, v32i8 if mode == "pair" else v16i16))
            out = []
            a_off_g = builder.mul(g, _I64(group_bytes))
            for r in range(rows_max):
                word = _load_group(builder, row_a[r], a_off_g, esize, rem_or_none)
                av = _a_vector(builder, word, mode, esize, signed)
                for j in range(nvec):
                    if mode == "pair":
                        p = builder.call(madd_wd, [builder.call(madd_ubs, [av, bvecs[j]]), ones])
                    else:
                        p = builder.call(madd_wd, [av, bvecs[j]])
                    out.append(builder.add(accs[r * nvec + j], p))
            return out

        entry = builder.basic_block
        fn = builder.function
        header = fn.append_basic_block("tile_header")
        body = fn.append_basic_block("tile_body")
        after = fn.append_basic_block("tile_after")
        tail = fn.append_basic_block("tile_tail")
        done = fn.append_basic_block("tile_done")
        builder.branch(header)

        builder.position_at_end(header)
        g = builder.phi(_I64)
        g.add_incoming(_I64(0), entry)
        accs = []
        for _ in range(rows_max * nvec):
            phi = builder.phi(v8i32)
            phi.add_incoming(zero, entry)
            accs.append(phi)
        builder.cbranch(builder.icmp_signed("<", g, steps), body, after)

        builder.position_at_end(body)
        new = step(accs, g, None)
        g_next = builder.add(g, _I64(1))
        body_end = builder.basic_block
        g.add_incoming(g_next, body_end)
        for phi, v in zip(accs, new):
            phi.add_incoming(v, body_end)
        builder.branch(header)

        builder.position_at_end(after)
        builder.cbranch(builder.icmp_signed(">", rem, _I64(0)), tail, done)

        builder.position_at_end(tail)
        tail_accs = step(accs, steps, rem)
        tail_end = builder.basic_block
        builder.branch(done)

        builder.position_at_end(done)
        final = []
        for phi, v in zip(accs, tail_accs):
            f = builder.phi(v8i32)
            f.add_incoming(phi, after)
            f.add_incoming(v, tail_end)
            final.append(f)
        rows_vals = []  # per row: <8 x i32> per 8 columns, in column order
        for r in range(rows_max):
            if mode == "pair":
                rows_vals.append(final[r * nvec:(r + 1) * nvec])
            else:  # lanes (2c, 2c+1) of two vectors of 4 columns -> 8 columns in order
                vals = []
                for j in range(0, nvec, 2):
                    lo, hi = final[r * nvec + j], final[r * nvec + j + 1]
                    even = builder.shuffle_vector(lo, hi, ir.Constant(v8i32, list(range(0, 16, 2))))
                    odd = builder.shuffle_vector(lo, hi, ir.Constant(v8i32, list(range(1, 16, 2))))
                    vals.append(builder.add(even, odd))
                rows_vals.append(vals)
        if not transposed:
            for r in range(rows_max):
                for j, v in enumerate(rows_vals[r]):
                    ptr = builder.bitcast(builder.gep(row_c[r], [_I64(32 * j)]), v8i32.as_pointer())
                    builder.store(v, ptr, align=4)
            return context.get_dummy_value()
        # transposed: column c of the tile is rows_max consecutive int32 at c_base + c*ldc
        col_t = ir.VectorType(_I32, rows_max)
        for j in range(len(rows_vals[0])):
            for cc in range(8):
                v = ir.Constant(col_t, ir.Undefined)
                for r in range(rows_max):
                    v = builder.insert_element(v, builder.extract_element(rows_vals[r][j], _I32(cc)), _I32(r))
                ptr = builder.gep(c_base, [builder.mul(_I64(8 * j + cc), ldc)])
                builder.store(v, builder.bitcast(ptr, col_t.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


def _make_tile(width, transposed=False):
    """An intrinsic ``tile(pair, a, a_off, lda, steps, rem, b, b_off, ldb, c, c_off, ldc, rows)`` of
    ``width`` (16 or 8) columns: C rows (byte offsets/strides) = the tile's sums over ``steps`` whole
    groups of 4 and a partial group of ``rem`` elements; ``rows`` valid rows of A (<= the family's
    tile height; the last is repeated). ``pair`` must be a compile-time constant (a literal bool):
    True is the pair family (PAIR_ROWS rows), False the exact one (EXACT_ROWS rows). ``transposed``
    stores C^T instead: column c of the tile as the tile height's consecutive int32 at byte
    c_off + c*ldc (all of them: the caller gives a scratch tile when fewer rows are valid)."""

    @intrinsic
    def tile(typingctx, pair, a, a_off, lda, steps, rem, b, b_off, ldb, c, c_off, ldc, rows):
        if not isinstance(a, types.Array) or not isinstance(pair, types.BooleanLiteral):
            return None
        mode = "pair" if pair.literal_value else "exact"
        if mode == "pair" and a.dtype.bitwidth != 8:
            return None
        rows_max, nvec = (PAIR_ROWS, width // 8) if mode == "pair" else (EXACT_ROWS, width // 4)
        sig = types.void(pair, a, types.int64, types.int64, types.int64, types.int64, b, types.int64, types.int64,
                         c, types.int64, types.int64, types.int64)
        gen = _tile_codegen(mode, rows_max, nvec, a.dtype.bitwidth // 8, a.dtype.signed, transposed)
        return sig, lambda context, builder, sig_, args: gen(context, builder, types.void(*sig_.args[1:]), args[1:])

    return tile


_tile16 = _make_tile(16)
_tile8 = _make_tile(8)
_tile16t = _make_tile(16, True)
_tile8t = _make_tile(8, True)


# ---------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------
def _make_driver(pair: bool):
    """The driver of one kernel family, pair (``pair``) or exact, as a Numba closure over that flag
    alone: Numba cannot pass an intrinsic as an argument, a closure over the intrinsics themselves
    misses the cache on every run (its key pickles the closure's cells), and one body typing both
    families would type the pair tiles on int16 A; the constant flag's other branch is pruned."""
    rows_max = PAIR_ROWS if pair else EXACT_ROWS
    b_esize = 1 if pair else 2

    @jit
    def driver(a, m, lda, k, bp, n, trans, blk0, blk1, out):
        """out = the family's sums (C [M, N], or C^T [N, M] when ``trans``), int32; a: A's elements
        from A[0, 0] to A[M-1, K-1] as a flat array (row m at byte m*lda), bp the packed B of
        :class:`PackedB`. Blocks blk0 <= blk < blk1 of BLOCK_ROWS rows; in each, panel by panel (the
        panel stays in L1), tiles of rows_max rows. Tiles reaching past N (or, transposed, with fewer
        than rows_max rows) go through a scratch tile."""
        es = a.itemsize
        end = (m - 1) * lda + k * es  # one past A's last byte
        groups = (k + 3) // 4
        n_pad = (n + 7) // 8 * 8
        n_panels = (n_pad + PANEL - 1) // PANEL
        for blk in range(blk0, blk1):
            scratch = np.empty((PANEL, rows_max) if trans else (rows_max, PANEL), np.int32)
            m0 = blk * BLOCK_ROWS
            m1 = min(m, m0 + BLOCK_ROWS)
            for p in range(n_panels):
                n0 = p * PANEL
                width = min(PANEL, n_pad - n0)
                b_off = n0 * groups * 4 * b_esize
                ldb = width * 4 * b_esize
                for r0 in range(m0, m1, rows_max):
                    rows = min(rows_max, m1 - r0)
                    if (r0 + rows - 1) * lda + groups * 4 * es <= end:  # over-read inside A: no partial group
                        steps, rem = groups, 0
                    else:
                        steps, rem = k // 4, k % 4
                    full = n0 + width <= n and (rows == rows_max or not trans)
                    dst = out if full else scratch
                    if trans:
                        c_off = (n0 * m + r0) * 4 if full else 0
                        c_ld = m * 4 if full else rows_max * 4
                        if width == PANEL:
                            _tile16t(pair, a, r0 * lda, lda, steps, rem, bp, b_off, ldb, dst, c_off, c_ld, rows)
                        else:
                            _tile8t(pair, a, r0 * lda, lda, steps, rem, bp, b_off, ldb, dst, c_off, c_ld, rows)
                    else:
                        c_off = (r0 * n + n0) * 4 if full else 0
                        c_ld = n * 4 if full else PANEL * 4
                        if width == PANEL:
                            _tile16(pair, a, r0 * lda, lda, steps, rem, bp, b_off, ldb, dst, c_off, c_ld, rows)
                        else:
                            _tile8(pair, a, r0 * lda, lda, steps, rem, bp, b_off, ldb, dst, c_off, c_ld, rows)
                    if not full:
                        for r in range(rows):
                            for cc in range(min(width, n - n0)):
                                if trans:
                                    out[n0 + cc, r0 + r] = scratch[cc, r]
                                else:
                                    out[r0 + r, n0 + cc] = scratch[r, cc]

    return driver


# pair-saturated u8 x s8 (int8 packed B) and exact sums (int16 packed B)
_gemm_pair = _make_driver(True)
_gemm_exact = _make_driver(False)


# ---------------------------------------------------------------------------------------------
# packing and public functions
# ---------------------------------------------------------------------------------------------
def _aligned_empty(size: int, dtype) -> np.ndarray:
    """A 1-D array whose data starts on a 64-byte boundary (a cache line: a panel's step never
    straddles two lines)."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size * dtype.itemsize].view(dtype)


def _pack(bt: np.ndarray, dtype) -> np.ndarray:
    """bt [N, K] -> flat panels: panel p (16 columns, the last 8 when N % 16 is in 1..8) holds, per
    group g of 4 reduction indices, its columns' 4 values in a row: [g][column][4], zero-padded."""
    n, k = bt.shape
    groups = -(-k // 4)
    n_pad = -(-n // 8) * 8
    padded = np.zeros((n_pad, groups * 4), dtype)
    padded[:n, :k] = bt
    out = _aligned_empty(n_pad * groups * 4, dtype)
    for n0 in range(0, n_pad, PANEL):
        width = min(PANEL, n_pad - n0)
        panel = padded[n0:n0 + width].reshape(width, groups, 4).transpose(1, 0, 2)
        out[n0 * groups * 4:(n0 + width) * groups * 4] = panel.reshape(-1)
    return out


class PackedB:
    """The right operand bt [N, K] (rows are output columns, as ``gemm_raw``'s ``bt2d``) prepared once
    for :func:`gemm_u8s8` / :func:`gemm_exact`: panels of 16 columns, groups of 4 along K, zero-padded;
    int8 for the pair kernel (bt within int8), int16 for the exact kernel (bt within int16), each built
    on first use and kept."""

    def __init__(self, bt):
        bt = np.asarray(bt)
        if bt.ndim != 2 or not np.issubdtype(bt.dtype, np.integer):
            raise HwsimError(f"simd.PackedB: expected an integer matrix [N, K], found {bt.dtype} {bt.shape}")
        self.bt = bt
        self.n, self.k = (int(s) for s in bt.shape)
        self.lo = int(bt.min()) if bt.size else 0
        self.hi = int(bt.max()) if bt.size else 0
        self.bmax = max(abs(self.lo), abs(self.hi))
        self._pair = None
        self._exact = None

    def pair(self) -> np.ndarray:
        if self._pair is None:
            if self.lo < -128 or self.hi > 127:
                raise HwsimError(f"simd.gemm_u8s8: B must hold int8 values, found [{self.lo}, {self.hi}]")
            self._pair = _pack(self.bt, np.int8)
        return self._pair

    def exact(self) -> np.ndarray:
        if self._exact is None:
            if self.lo < -32768 or self.hi > 32767:
                raise HwsimError(f"simd.gemm_exact: B must hold int16 values, found [{self.lo}, {self.hi}]")
            self._exact = _pack(self.bt, np.int16)
        return self._exact


def pack_b(bt) -> PackedB:
    """bt [N, K] prepared for :func:`gemm_u8s8` / :func:`gemm_exact` (see :class:`PackedB`)."""
    return PackedB(bt)


def _check_a(a, packed: PackedB, what: str, dtypes) -> np.ndarray:
    if not isinstance(packed, PackedB):
        raise HwsimError(f"simd.{what}: B must come from simd.pack_b, found {type(packed).__name__}")
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype not in dtypes:
        raise HwsimError(f"simd.{what}: A must be a 2-D {'/'.join(str(np.dtype(d)) for d in dtypes)} array, "
                         f"found {a.dtype} {a.shape}")
    if a.shape[1] != packed.k:
        raise HwsimError(f"simd.{what}: A has K = {a.shape[1]}, B has K = {packed.k}")
    if (a.shape[1] > 1 and a.strides[1] != a.itemsize) or a.strides[0] < 0 or a.strides[0] % a.itemsize:
        a = np.ascontiguousarray(a)
    return a


@functools.lru_cache(maxsize=None)
def _pool(n_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_threads, thread_name_prefix="hwsim-simd")


def _run(driver, a, k, bp, n, trans, out):
    """driver over all row blocks, shared out in numba.get_num_threads() contiguous ranges run by
    Python threads (the kernels release the GIL; a Numba parallel region would double their compile
    time) when the product is large enough to repay the threads' start."""
    flat, m, lda = _flat(a)
    n_blocks = -(-m // BLOCK_ROWS)
    n_threads = min(numba.get_num_threads(), n_blocks)
    if n_threads < 2 or m * k * n < PARALLEL_MIN_MACS:
        driver(flat, m, lda, k, bp, n, trans, 0, n_blocks, out)
        return
    cuts = [n_blocks * i // n_threads for i in range(n_threads + 1)]
    jobs = [_pool(n_threads).submit(driver, flat, m, lda, k, bp, n, trans, b0, b1, out)
            for b0, b1 in zip(cuts[:-1], cuts[1:])]
    for job in jobs:
        job.result()


def _flat(a: np.ndarray):
    """(flat, M, lda): A's elements from A[0, 0] to A[M-1, K-1] as one contiguous 1-D array (rows at
    byte stride lda, gaps included), so that every row stride compiles to one kernel specialization."""
    m, k = a.shape
    lda = a.strides[0] if m > 1 else k * a.itemsize
    span = ((m - 1) * lda) // a.itemsize + k
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,)), m, lda


def gemm_u8s8(a, packed: PackedB, pair_saturation: bool = False, transpose: bool = False) -> np.ndarray:
    """out[m, n] = sum_k a[m, k] * bt[n, k] as int32 [M, N], a uint8 [M, K], bt int8 (``pack_b``).

    ``pair_saturation``: sum_j sat16(a[m, 2j]*bt[n, 2j] + a[m, 2j+1]*bt[n, 2j+1]) (odd K: the last
    product alone), ONNX Runtime's AVX2 u8 x s8 arithmetic, equal to ``mac.gemm_raw(..., True)``.
    Both are exact in int32 for K < 65794 (K*255*128 < 2^31), which is checked. ``transpose``
    returns out.T [N, M] (C-contiguous) instead: a convolution's [channels, pixels] layout when A's
    rows are pixels (NHWC im2col), as the runtime's GEMM epilogue reads it.

    >>> if available():
    ...     a = np.array([[255, 255, 1]], np.uint8); bt = np.array([[-128, -128, 3]], np.int8)
    ...     print(gemm_u8s8(a, pack_b(bt)), gemm_u8s8(a, pack_b(bt), pair_saturation=True))
    ... else:
    ...     print("[[-65277]] [[-32765]]")
    [[-65277]] [[-32765]]
    """
    _require()
    a = _check_a(a, packed, "gemm_u8s8", (np.dtype(np.uint8),))
    m, k = a.shape
    if packed.lo < -128 or packed.hi > 127:
        raise HwsimError(f"simd.gemm_u8s8: B must hold int8 values, found [{packed.lo}, {packed.hi}]")
    if k * 255 * packed.bmax >= INT32_LIMIT:
        raise HwsimError(f"simd.gemm_u8s8: K = {k} is too long for int32 accumulators (K*255*max|B| < 2^31)")
    out = np.empty((packed.n, m) if transpose else (m, packed.n), np.int32)
    if m == 0 or packed.n == 0 or k == 0:
        out[...] = 0
        return out
    if pair_saturation:
        _run(_gemm_pair, a, k, packed.pair(), packed.n, bool(transpose), out)
    else:
        _run(_gemm_exact, a, k, packed.exact(), packed.n, bool(transpose), out)
    return out


def gemm_exact(a, packed: PackedB, transpose: bool = False) -> np.ndarray:
    """out[m, n] = sum_k a[m, k] * bt[n, k] exactly, int32 [M, N]: a uint8, int8 or int16 [M, K]
    (e.g. centred 8-bit operands), bt within int16 (``pack_b``); u8 x s8, s8 x s8, u8 x u8 alike.
    Refused (HwsimError) unless K * max|a| * max|b| < 2^31 (max|a| from A's dtype for 8-bit A).
    ``transpose``: out.T [N, M] instead, as in :func:`gemm_u8s8`.

    >>> if available():  # s8 x s8: (-128)*(-128) twice, 32768 (no int16 pair saturation here)
    ...     print(gemm_exact(np.array([[-128, -128]], np.int8), pack_b([[-128, -128]])))
    ... else:
    ...     print("[[32768]]")
    [[32768]]
    """
    _require()
    a = _check_a(a, packed, "gemm_exact", (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16)))
    m, k = a.shape
    if a.dtype == np.uint8:
        amax = 255
    elif a.dtype == np.int8:
        amax = 128
    else:
        amax = max(-int(a.min()), int(a.max())) if a.size else 0
    if k * amax * packed.bmax >= INT32_LIMIT:
        raise HwsimError(f"simd.gemm_exact: K*max|A|*max|B| = {k}*{amax}*{packed.bmax} does not fit int32 "
                         "accumulators (< 2^31)")
    bp = packed.exact()
    out = np.empty((packed.n, m) if transpose else (m, packed.n), np.int32)
    if m == 0 or packed.n == 0 or k == 0:
        out[...] = 0
        return out
    _run(_gemm_exact, a, k, bp, packed.n, bool(transpose), out)
    return out
