"""runtime.kernels.simd: the AVX2 micro-kernels, bit for bit (0 LSB).

- pair mode (``vpmaddubsw``) equals the int64 direct loop ``mac._gemm_raw(..., pair=True)`` (not
  ``mac.gemm_raw``, which runs these very kernels on an AVX2 host) and the slow pair-saturated
  reference of tests/reference_kernels.py; exact mode equals int64 sums, for u8 x s8,
  s8 x s8, u8 x u8 and int16 (centred) A; random shapes with K = 1, K not a multiple of 4 and of 32,
  partial row and column tiles, several row blocks (and threads); full-range values and the
  saturating edges; the transposed output (C^T) alike;
- A read in place: row-strided views, and an A whose last byte is the last readable byte before a
  PROT_NONE page (a kernel reading past A's last row would crash the test run);
- the hardware check (no AVX2 / not x86 -> unavailable, and the public functions refuse) and the
  validating wrapper's errors.
Everything that executes a kernel is skipped on a host without AVX2.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import HwsimError, UnsupportedError
from runtime.kernels import simd
from runtime.kernels.mac import _gemm_raw
from tests.reference_kernels import matmul_ref
from tests.strategies import int_tensors

needs_avx2 = pytest.mark.skipif(not simd.available(), reason="host without AVX2 (or Numba not compiling for it)")


def exact_ref(a, bt):
    return np.asarray(a, np.int64) @ np.asarray(bt, np.int64).T


def pair_ref(a, bt):
    """Pair-saturated sums by the int64 direct loop (no SIMD, no BLAS)."""
    a64, bt64 = np.ascontiguousarray(a, np.int64), np.ascontiguousarray(bt, np.int64)
    out = np.empty((a64.shape[0], bt64.shape[0]), np.int64)
    _gemm_raw(a64, bt64, True, out)
    return out


def pair_formula(k, prod):
    """Pair-saturated sum of K equal products ``prod`` (pairs sat16(2*prod), an odd last alone)."""
    return (k // 2) * int(np.clip(2 * prod, -32768, 32767)) + (k % 2) * prod


@st.composite
def gemm_shapes(draw, max_m=40, max_n=40, max_k=80):
    k = draw(st.one_of(st.integers(1, max_k), st.sampled_from([1, 2, 3, 4, 5, 31, 32, 33, 64])))
    return draw(st.integers(1, max_m)), k, draw(st.integers(1, max_n))


# ---------------------------------------------------------------------------------------------
# hardware check (runs everywhere)
# ---------------------------------------------------------------------------------------------
def test_unavailable_without_avx2_or_off_x86(monkeypatch):
    import runtime.target

    try:
        simd.available.cache_clear()
        monkeypatch.setattr(runtime.target, "cpu_flags", lambda: {"sse2", "avx", "fma"})
        monkeypatch.setattr(simd.platform, "machine", lambda: "x86_64")
        assert simd.available() is False
        simd.available.cache_clear()
        monkeypatch.setattr(runtime.target, "cpu_flags", lambda: {"avx2"})
        monkeypatch.setattr(simd.platform, "machine", lambda: "aarch64")
        assert simd.available() is False
        simd.available.cache_clear()
        monkeypatch.setattr(simd.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(simd.numba.config, "CPU_NAME", "generic")
        monkeypatch.setattr(simd.numba.config, "CPU_FEATURES", "")
        assert simd.available() is False  # Numba compiling for a CPU without AVX2
        simd.available.cache_clear()
        monkeypatch.setattr(simd.numba.config, "CPU_NAME", None)
        monkeypatch.setattr(simd.numba.config, "DISABLE_JIT", True)
        assert simd.available() is False  # no Python version of the LLVM micro-kernels
        simd.available.cache_clear()
        monkeypatch.setattr(simd.numba.config, "DISABLE_JIT", False)
        assert simd.available() is True
    finally:
        simd.available.cache_clear()


def test_public_functions_refuse_without_avx2(monkeypatch):
    monkeypatch.setattr(simd, "available", lambda: False)
    packed = simd.pack_b(np.zeros((2, 3), np.int8))
    with pytest.raises(UnsupportedError, match="AVX2"):
        simd.gemm_u8s8(np.zeros((1, 3), np.uint8), packed, pair_saturation=True)
    with pytest.raises(UnsupportedError, match="AVX2"):
        simd.gemm_exact(np.zeros((1, 3), np.int8), packed)


def test_packing_layout():
    """Panels of 16 columns (the last 8 when N % 16 is 1..8), groups of 4 along K, zeros beyond N, K."""
    bt = np.arange(1, 21 * 5 + 1).reshape(21, 5).astype(np.int16)  # N = 21 -> padded 24: panels 16 + 8
    flat = simd._pack(bt, np.int16)
    assert flat.ctypes.data % 64 == 0 and flat.size == 24 * 2 * 4
    p0 = flat[:16 * 2 * 4].reshape(2, 16, 4)  # [group][column][4]
    assert p0[0, 3].tolist() == bt[3, 0:4].tolist() and p0[1, 3].tolist() == [bt[3, 4], 0, 0, 0]
    p1 = flat[16 * 2 * 4:].reshape(2, 8, 4)
    assert p1[0, 4].tolist() == bt[20, 0:4].tolist() and not p1[:, 5:].any()


# ---------------------------------------------------------------------------------------------
# bit exactness
# ---------------------------------------------------------------------------------------------
@needs_avx2
@given(shape=gemm_shapes(), transpose=st.booleans(), data=st.data())
def test_u8s8_both_modes_equal_direct_loop(shape, transpose, data):
    m, k, n = shape
    a = data.draw(int_tensors((m, k), "uint8"))
    bt = data.draw(int_tensors((n, k), "int8"))
    packed = simd.pack_b(bt)
    exact = simd.gemm_u8s8(a, packed, transpose=transpose)
    pair = simd.gemm_u8s8(a, packed, pair_saturation=True, transpose=transpose)
    shape_out = (n, m) if transpose else (m, n)
    assert exact.dtype == np.int32 and exact.shape == shape_out and pair.dtype == np.int32
    assert exact.flags.c_contiguous and pair.shape == shape_out
    exact, pair = (exact.T, pair.T) if transpose else (exact, pair)
    np.testing.assert_array_equal(exact, exact_ref(a, bt))
    np.testing.assert_array_equal(pair, pair_ref(a, bt))


@needs_avx2
@given(shape=gemm_shapes(max_m=6, max_n=6, max_k=40), data=st.data())
def test_pair_mode_equals_slow_reference(shape, data):
    m, k, n = shape
    a = data.draw(int_tensors((m, k), "uint8"))
    bt = data.draw(int_tensors((n, k), "int8"))
    ref = matmul_ref(a, 0, bt.T, 0, pair_saturation=True)
    np.testing.assert_array_equal(simd.gemm_u8s8(a, simd.pack_b(bt), pair_saturation=True), ref)


@needs_avx2
@given(shape=gemm_shapes(), kinds=st.sampled_from([("int8", "int8"), ("uint8", "uint8"), ("int8", "uint8"),
                                                    ("uint8", "int8"), ("int16", "int8")]), data=st.data())
def test_exact_mode_any_8bit_and_int16_a(shape, kinds, data):
    """s8 x s8, u8 x u8, s8 x u8 and int16 x s8 (int16 A within the int32 bound: centred 8-bit values)."""
    m, k, n = shape
    a_kind, b_kind = kinds
    if a_kind == "int16":
        a = data.draw(int_tensors((m, k), "int16"))
        a = np.clip(a, -(1 << 31) // (128 * k) + 1, ((1 << 31) - 1) // (128 * k)).astype(np.int16)
    else:
        a = data.draw(int_tensors((m, k), a_kind))
    bt = data.draw(int_tensors((n, k), b_kind))
    packed = simd.pack_b(bt)
    np.testing.assert_array_equal(simd.gemm_exact(a, packed), exact_ref(a, bt))
    np.testing.assert_array_equal(simd.gemm_exact(a, packed, transpose=True), exact_ref(a, bt).T)


@needs_avx2
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 27, 32, 33, 116])
@pytest.mark.parametrize("a_val,b_val", [(255, -128), (255, 127), (0, -128), (255, 0), (1, -1)])
def test_golden_edges(k, a_val, b_val):
    """Every pair at the same product: 255 x -128 and 255 x 127 saturate (to -32768 / 32767) in
    pair mode, an odd K's last product stays alone; 0 and +-1 products stay exact."""
    m, n = 5, 19  # a partial row tile and a partial 8-column panel
    a = np.full((m, k), a_val, np.uint8)
    bt = np.full((n, k), b_val, np.int8)
    packed = simd.pack_b(bt)
    prod = a_val * b_val
    assert (simd.gemm_u8s8(a, packed, pair_saturation=True) == pair_formula(k, prod)).all()
    assert (simd.gemm_u8s8(a, packed, pair_saturation=True, transpose=True) == pair_formula(k, prod)).all()
    assert (simd.gemm_u8s8(a, packed) == k * prod).all()


@needs_avx2
@pytest.mark.parametrize("m,k,n", [(3136, 116, 116), (2 * simd.BLOCK_ROWS + 3, 27, 24), (37, 1024, 33)])
def test_layer_sized(m, k, n):
    """ShuffleNet's 116x116 pointwise layer on 4 images, a K = 27 first conv, a long K; full range."""
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    bt = rng.integers(-128, 128, (n, k), dtype=np.int8)
    packed = simd.pack_b(bt)
    pair = pair_ref(a, bt)
    np.testing.assert_array_equal(simd.gemm_u8s8(a, packed, pair_saturation=True), pair)
    np.testing.assert_array_equal(simd.gemm_u8s8(a, packed, pair_saturation=True, transpose=True), pair.T)
    np.testing.assert_array_equal(simd.gemm_u8s8(a, packed), exact_ref(a, bt))
    a16 = (a.astype(np.int16) - 128)  # a centred operand, exact in int16
    np.testing.assert_array_equal(simd.gemm_exact(a16, packed), exact_ref(a16, bt))


@needs_avx2
@given(shape=gemm_shapes(max_m=20, max_n=20, max_k=40), pad=st.integers(1, 9), step=st.sampled_from([1, 2]),
       data=st.data())
def test_row_strided_views(shape, pad, step, data):
    """A = X[::step, :K] of a wider array: rows read in place with their stride."""
    m, k, n = shape
    x = data.draw(int_tensors((m * step, k + pad), "uint8"))
    a = x[::step, :k]
    bt = data.draw(int_tensors((n, k), "int8"))
    packed = simd.pack_b(bt)
    np.testing.assert_array_equal(simd.gemm_u8s8(a, packed, pair_saturation=True), pair_ref(a, bt))
    np.testing.assert_array_equal(simd.gemm_u8s8(a, packed), exact_ref(a, bt))


@needs_avx2
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through libc")
@pytest.mark.parametrize("k", [1, 2, 3, 5, 6, 7, 27, 33])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_no_read_past_the_last_row(k, dtype):
    """A ends exactly where a PROT_NONE page begins: the partial last group of the last rows must be
    read element by element (a 4-element load there would fault)."""
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * page)
    cref = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(cref)
    del cref
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(addr + page), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    try:
        m = 7
        size = m * k * np.dtype(dtype).itemsize
        a = np.frombuffer(buf, dtype, m * k, page - size).reshape(m, k)
        vals = np.random.default_rng(k).integers(0, 256, (m, k)).astype(dtype)
        a[...] = vals
        bt = np.random.default_rng(k + 1).integers(-128, 128, (9, k)).astype(np.int8)
        packed = simd.pack_b(bt)
        if dtype == np.uint8:
            np.testing.assert_array_equal(simd.gemm_u8s8(a, packed, pair_saturation=True), pair_ref(vals, bt))
            np.testing.assert_array_equal(simd.gemm_u8s8(a, packed), exact_ref(vals, bt))
        else:
            np.testing.assert_array_equal(simd.gemm_exact(a, packed), exact_ref(vals, bt))
        del a
    finally:
        libc.mprotect(ctypes.c_void_p(addr + page), ctypes.c_size_t(page), 3)  # PROT_READ | PROT_WRITE
        buf.close()


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@needs_avx2
def test_validation_errors():
    packed = simd.pack_b(np.zeros((3, 4), np.int8))
    with pytest.raises(HwsimError, match="uint8"):
        simd.gemm_u8s8(np.zeros((2, 4), np.int8), packed)
    with pytest.raises(HwsimError, match="K = 5"):
        simd.gemm_u8s8(np.zeros((2, 5), np.uint8), packed)
    with pytest.raises(HwsimError, match="pack_b"):
        simd.gemm_u8s8(np.zeros((2, 4), np.uint8), np.zeros((3, 4), np.int8))
    with pytest.raises(HwsimError, match="int8 values"):
        simd.gemm_u8s8(np.zeros((2, 4), np.uint8), simd.pack_b(np.full((3, 4), 200)))
    with pytest.raises(HwsimError, match="int16 values"):
        simd.gemm_exact(np.zeros((2, 4), np.int8), simd.pack_b(np.full((3, 4), 40000)))
    with pytest.raises(HwsimError, match="int32"):
        simd.gemm_exact(np.full((1, 4), 30000, np.int16), simd.pack_b(np.full((3, 4), 30000)))
    with pytest.raises(HwsimError, match="too long"):
        simd.gemm_u8s8(np.zeros((1, 70000), np.uint8), simd.pack_b(np.full((1, 70000), -128, np.int8)))
    with pytest.raises(HwsimError, match="integer matrix"):
        simd.pack_b(np.zeros((3, 4), np.float32))
    empty = simd.gemm_u8s8(np.zeros((0, 4), np.uint8), packed, pair_saturation=True)
    assert empty.shape == (0, 3) and empty.dtype == np.int32
    zero_k = simd.gemm_exact(np.zeros((2, 0), np.int8), simd.pack_b(np.zeros((3, 0), np.int8)))
    assert zero_k.shape == (2, 3) and not zero_k.any()
