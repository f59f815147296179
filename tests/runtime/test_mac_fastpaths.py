"""Fast paths of the integer runtime's kernels, each forced and checked bit for bit (0 LSB) against
tests/reference_kernels.py (or the plain int64 definition for a layer-sized case):
runtime.kernels.mac exact sums by float32 BLAS (one chunk, and K-chunked past the 2^24 bound),
float64 BLAS and the int64 direct loop; pair saturation as a sparse correction (bucket flag test on
non-negative operands, column-extreme test on signed ones), as the dense pair kernel, and the int64
fallback for wide operands; 1x1 convolutions without im2col, im2col convs, the direct depthwise
kernel (equal strides in phases, unequal strides row by row, depth multiplier), batch slicing;
runtime.kernels.requant's vectorized float32 requantization and its one-pass counted form; and
runtime.kernels.pooling's MaxPool plane kernel. Tests assert which kernel ran (a spy on the module's
private kernels), so that a path that silently stops being taken fails instead of passing on a
fallback; the flag test is also checked to be a sound bound (it never misses a saturating pair)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.kernels import mac
from runtime.kernels.mac import apply_accumulator, conv_acc, gemm_raw, matmul_acc
from runtime.kernels.requant import requantize_float32
from tests.reference_kernels import accumulator_ref, conv_ref, matmul_ref
from tests.runtime.test_requant import requantize_float32_ref
from tests.strategies import KERNEL_DTYPES, int_tensors

EDGES = {"uint8": [0, 255], "int8": [-128, 127], "int16": [-32768, 32767], "int4": [-8, 7]}


# ---------------------------------------------------------------------------------------------
# helpers: spies, and draws with the edge values 0 / qmin / qmax
# ---------------------------------------------------------------------------------------------
class Spy:
    """Counts calls of some private kernels of a module (wrapped in place for one test)."""

    def __init__(self, monkeypatch, module, *names):
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            monkeypatch.setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return counted

    def __getitem__(self, name):
        return self.calls[name]


def _zp(dtype_name):
    lo, hi = KERNEL_DTYPES[dtype_name][1:]
    return st.one_of(st.just(0), st.sampled_from([lo, hi]), st.integers(lo, hi))


@st.composite
def edge_tensors(draw, shape, dtype_name, high_fraction=None):
    """int_tensors, or (``high_fraction``) mostly small values with that fraction at the dtype's top
    (the shape of real ReLU activations: few pairs can saturate)."""
    if high_fraction is None:
        return draw(int_tensors(shape, dtype_name))
    dt, lo, hi = KERNEL_DTYPES[dtype_name]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(max(lo, 0), max(lo, 0) + 40, shape)
    x[rng.random(shape) < high_fraction] = hi
    return x.astype(dt)


def _matmul_case(draw, m, k, n, a_dt="uint8", b_dt="int8", high_fraction=None):
    a = draw(edge_tensors((m, k), a_dt, high_fraction))
    b = draw(edge_tensors((k, n), b_dt))
    zb = draw(st.one_of(_zp(b_dt), st.lists(_zp(b_dt), min_size=n, max_size=n).map(np.array)))
    return dict(a=a, a_zero_point=draw(_zp(a_dt)), b=b, b_zero_point=zb,
                bias=draw(st.one_of(st.none(), st.just(np.arange(n, dtype=np.int32) * 7 - 3))))


def _check_matmul(case, pair):
    out = matmul_acc(**case, pair_saturation=pair)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, matmul_ref(**case, pair_saturation=pair))


# ---------------------------------------------------------------------------------------------
# exact sums: float32 (one chunk, chunked), float64, int64
# ---------------------------------------------------------------------------------------------
def test_exact_dtype_bounds():
    # u8 x s8 centred: at most 255 * 255 per product -> float32 chunk of (2^24 - 1) // 65025 = 258
    assert mac._exact_dtype(258, 255, 255) == (np.float32, 258)
    assert mac._exact_dtype(259, 255, 255) == (np.float32, 258)
    assert mac._exact_dtype(100, 65535, 255) == (np.float64, 100)  # chunk 1 < MIN_F32_CHUNK
    assert mac._exact_dtype(4, 2**30, 2**30) == (np.int64, 4)  # 4 * 2^60 >= 2^53
    k, per = 10**6, 2**33  # exactly at the float64 edge
    assert mac._exact_dtype(k, per, 1)[0] == np.float64 and mac._exact_dtype(2**20, 2**33, 1)[0] == np.int64


@settings(max_examples=25)
@given(st.integers(1, 4), st.integers(1, 70), st.integers(1, 5), st.data())
def test_float32_single_chunk(m, k, n, data):
    case = _matmul_case(data.draw, m, k, n)
    amax = mac._abs_max(case["a"], case["a_zero_point"])
    dtype, chunk = mac._exact_dtype(k, amax, 255)
    assert dtype == np.float32 and chunk >= k
    _check_matmul(case, False)


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(520, 800), st.integers(1, 3), st.data())
def test_float32_chunked_past_the_2_24_bound(m, k, n, data):
    # full-range u8 and s8 with zero points at the far ends: |a - za| * |b - zb| up to 255 * 255, so
    # K * 255^2 > 2^24 and one float32 GEMM could round; the chunked sum must stay exact
    a = np.full((m, k), 255, np.uint8)
    a[:, data.draw(st.integers(0, k - 1))] = 0
    b = data.draw(int_tensors((k, n), "int8"))
    b[:, 0] = -128  # column 0: (k - 1) * 255 * -255, far beyond 2^24
    case = dict(a=a, a_zero_point=0, b=b, b_zero_point=127, bias=None)
    dtype, chunk = mac._exact_dtype(k, 255, 255)
    assert dtype == np.float32 and chunk < k
    _check_matmul(case, False)
    # the same data in one float32 GEMM is not exact in general: the chunking is what keeps it exact
    ref = matmul_ref(**case)
    assert int(np.abs(ref).max()) > 2**24


@settings(max_examples=15)
@given(st.integers(1, 3), st.integers(1, 30), st.integers(1, 4), st.data())
def test_float64_path_int16(m, k, n, data):
    case = _matmul_case(data.draw, m, k, n, "int16", "int16")
    case["a"][0, 0], case["b"][0, 0] = 32767, -32768  # per-product bound near 2^31: no float32 chunk
    case["a_zero_point"], case["b_zero_point"] = -data.draw(st.integers(0, 32768)), data.draw(st.integers(0, 32767))
    amax = mac._abs_max(case["a"], case["a_zero_point"])
    bmax = int(np.abs(case["b"].astype(np.int64) - case["b_zero_point"]).max())
    assert mac._exact_dtype(k, amax, bmax)[0] == np.float64
    _check_matmul(case, False)


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 3), st.data())
def test_int64_direct_loop_for_wide_operands(m, k, n, data):
    vals = st.integers(-(2**29), 2**29)
    a = np.array(data.draw(st.lists(vals, min_size=m * k, max_size=m * k)), np.int64).reshape(m, k)
    b = np.array(data.draw(st.lists(vals, min_size=k * n, max_size=k * n)), np.int64).reshape(k, n)
    a[0, 0], b[0, 0] = 2**29, -(2**29)
    case = dict(a=a, a_zero_point=data.draw(st.integers(-5, 5)), b=b, b_zero_point=0, bias=None)
    assert mac._exact_dtype(k, 2**29 + 5, 2**29)[0] == np.int64
    _check_matmul(case, False)


@settings(max_examples=12)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 3), st.data(), st.sampled_from(["f64", "int64"]))
def test_forced_wider_paths_equal_reference(m, k, n, data, path):
    case = _matmul_case(data.draw, m, k, n)
    with pytest.MonkeyPatch.context() as mp:
        if path == "f64":  # no float32 chunk is ever wide enough
            mp.setattr(mac, "MIN_F32_CHUNK", 1 << 40)
            mp.setattr(mac, "F32_EXACT", 1)
        else:  # nothing is float-exact
            mp.setattr(mac, "F32_EXACT", 1)
            mp.setattr(mac, "F64_EXACT", 1)
        assert mac._exact_dtype(k, 255, 255)[0] == (np.float64 if path == "f64" else np.int64)
        _check_matmul(case, False)


# ---------------------------------------------------------------------------------------------
# pair saturation: sparse correction, dense kernel, int64 fallback
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sparse", "dense"])
@settings(max_examples=15)
@given(st.integers(1, 6), st.integers(1, 60), st.integers(1, 40), st.data())
def test_pair_saturation_matmul_both_paths(mode, m, k, n, data):
    case = _matmul_case(data.draw, m, k, n, high_fraction=data.draw(st.sampled_from([None, 0.05, 0.3])))
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp, mac, "_pair_dense", "_pair_apply", "_pair_flags")
        mp.setattr(mac, "DENSE_NS_PER_PAIR", 0.0 if mode == "dense" else 1e9)
        _check_matmul(case, True)
        a, b = case["a"], case["b"]
        if 2 * int(a.max()) * int(np.abs(b.astype(np.int64)).max()) > 32767:  # some pair may saturate
            assert spy["_pair_flags"] == 1
            assert spy["_pair_dense"] == (mode == "dense")
            assert spy["_pair_apply"] <= (mode == "sparse")


def test_pair_flag_bucket_test_is_tighter_than_column_extremes():
    # weights of one pair: (127, -128) and (-128, 127): column extremes say a0*127 + a1*127 may reach
    # 64770; the bucket test knows no column has both large, so (255, 255) is not flagged
    w = np.array([[[127, -128], [-128, 127]]], np.int64)  # [G=1, K=2, N=2]
    t = mac._pair_tables(w, True)
    a3 = np.array([[[255], [255]]], np.int32)  # [N=1, K=2, P=1]
    flags, n_flag = mac._pair_flag_pass(t, a3)
    assert n_flag == 0
    t_signed = mac._pair_tables(w, False)
    assert mac._pair_flag_pass(t_signed, a3)[1] == 1
    # and the flag is a sound bound: the exact products never saturate here
    np.testing.assert_array_equal(gemm_raw(a3[0].T, w[0].T, True), gemm_raw(a3[0].T, w[0].T, False))


@settings(max_examples=30)
@given(st.integers(1, 4), st.integers(1, 24), st.integers(1, 6), st.data())
def test_pair_flags_never_miss_a_saturating_pair(m, k, n, data):
    """The flag test is an upper bound: every pair that saturates for some column is flagged."""
    a_dt = data.draw(st.sampled_from(["uint8", "int8"]))
    a = data.draw(int_tensors((m, k), a_dt)).astype(np.int64)
    b = data.draw(int_tensors((k, n), "int8")).astype(np.int64)
    nonneg = a_dt == "uint8"
    t = mac._pair_tables(b[None], nonneg)
    a3 = np.ascontiguousarray(a.T, dtype=np.int32)[None]
    flags, _ = mac._pair_flag_pass(t, a3)
    kp = k + (k % 2)
    ap = np.zeros((m, kp), np.int64)
    ap[:, :k] = a
    bp = np.zeros((kp, n), np.int64)
    bp[:k] = b
    p = ap[:, 0::2, None] * bp[None, 0::2, :] + ap[:, 1::2, None] * bp[None, 1::2, :]  # [M, J, N]
    saturates = ((p > 32767) | (p < -32768)).any(axis=2)  # [M, J]
    assert not (saturates & ~flags[0, :, :m].T.astype(bool)).any()


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 3), st.data())
def test_pair_saturation_wide_operands_int64_fallback(m, k, n, data):
    case = _matmul_case(data.draw, m, k, n, "int16", "int16")
    case["a"][0, 0], case["b"][0, 0] = 32767, -32768  # K*max|a|*max|w| >= 2^30: not int32-safe
    assert not mac._int32_safe(k, 32767, 32768)
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp, mac, "_gemm_raw", "_pair_flags")
        _check_matmul(case, True)
        assert spy["_gemm_raw"] >= 1 and spy["_pair_flags"] == 0


@settings(max_examples=10)
@given(st.integers(300, 700), st.data())
def test_pair_saturation_k_past_float32_bound(k, data):
    """Chunked float32 exact part + corrections, K past the 2^24 bound, both modes."""
    a = data.draw(edge_tensors((2, k), "uint8", high_fraction=0.2))
    b = data.draw(int_tensors((k, 3), "int8"))
    case = dict(a=a, a_zero_point=255, b=b, b_zero_point=-128, bias=None)
    assert mac._exact_dtype(k, 255, 255)[1] < k
    for dense in (0.0, 1e9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mac, "DENSE_NS_PER_PAIR", dense)
            _check_matmul(case, True)


@pytest.mark.parametrize("k, paired", [(1, 32385), (2, 32767), (3, 65152), (64, 1048544)])
@pytest.mark.parametrize("dense", [0.0, 1e9])
def test_pair_golden_255_times_127_both_modes(k, paired, dense, monkeypatch):
    monkeypatch.setattr(mac, "DENSE_NS_PER_PAIR", dense)
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 1), 127, np.int8)
    assert matmul_acc(a, 0, b, 0, pair_saturation=True)[0, 0] == paired
    b = np.full((k, 1), -128, np.int8)
    assert matmul_acc(a, 0, b, 0, pair_saturation=True)[0, 0] == -(k // 2) * 32768 - (k % 2) * 32640


@settings(max_examples=6)
@given(st.integers(1, 33), st.integers(1, 4), st.data())
def test_gemv_and_batched_matmul(k, batch, data):
    a = data.draw(int_tensors((batch, 1, k), "uint8"))
    b = data.draw(int_tensors((k, 7), "int8"))
    case = dict(a=a, a_zero_point=data.draw(_zp("uint8")), b=b, b_zero_point=3, bias=None)
    for pair in (False, True):
        _check_matmul(case, pair)


# ---------------------------------------------------------------------------------------------
# convolutions
# ---------------------------------------------------------------------------------------------
@st.composite
def conv_fast_cases(draw, kind):
    """conv_acc keyword arguments shaped for one path: ``pointwise`` (1x1, no padding, strides 1-2,
    groups), ``im2col`` (k x k, pads, dilations, groups, Cg odd or even), ``depthwise`` (one input
    channel per group, multiplier 1-2, equal or unequal strides)."""
    x_dt, w_dt = "uint8", "int8"
    if draw(st.booleans()):
        x_dt, w_dt = draw(st.sampled_from([("int8", "int8"), ("uint8", "uint8"), ("int16", "int8")]))
    batch = draw(st.integers(1, 3))
    if kind == "depthwise":
        c = draw(st.integers(1, 5))
        group, cg, m = c, 1, c * draw(st.integers(1, 2))
        kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        s = draw(st.integers(1, 3))
        strides = draw(st.sampled_from([(s, s), (1, 2), (2, 1)]))
    else:
        group = draw(st.sampled_from([1, 1, 2]))
        cg = draw(st.integers(1, 5))
        c, m = cg * group, group * draw(st.integers(1, 4))
        kernel = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 3)), draw(st.integers(2, 3)))
        strides = (draw(st.integers(1, 2)),) * 2
    dil = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = (0, 0, 0, 0) if kind == "pointwise" else tuple(draw(st.integers(0, k - 1)) for k in kernel * 2)
    spatial = tuple(draw(st.integers(max(1, (k - 1) * d + 1 - pads[i] - pads[i + 2]), 9))
                    for i, (k, d) in enumerate(zip(kernel, dil)))
    hf = draw(st.sampled_from([None, None, 0.1]))
    x = draw(edge_tensors((batch, c) + spatial, x_dt, hf if x_dt == "uint8" else None))
    zw = draw(st.one_of(_zp(w_dt), st.lists(_zp(w_dt), min_size=m, max_size=m).map(np.array)))
    bias = draw(st.one_of(st.none(), st.just(np.arange(m, dtype=np.int32) * 11 - 5)))
    return dict(x=x, x_zero_point=draw(_zp(x_dt)), w=draw(int_tensors((m, cg) + kernel, w_dt)),
                w_zero_point=zw, bias=bias, strides=strides, pads=pads, dilations=dil, group=group)


def _check_conv(case, pair, order="hwc"):
    out = conv_acc(**case, pair_saturation=pair, pair_order=order)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, conv_ref(**case, pair_saturation=pair, pair_order=order))


@settings(max_examples=25)
@given(conv_fast_cases("pointwise"), st.booleans())
def test_pointwise_conv_without_im2col(case, pair):
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp, mac, "_im2col_centered", "_center", "_im2col_raw", "_pair_dense", "_depthwise")
        _check_conv(case, pair)
        assert spy["_im2col_raw"] == 0  # the pair operands of a 1x1 conv are the input pixels
        if case["w"].shape[1] == 1:  # one input channel per group: the direct kernel
            assert spy["_depthwise"] + spy["_pair_dense"] >= 1 and spy["_im2col_centered"] == 0
        elif not spy["_pair_dense"]:  # exact sums: one image at stride 1 is the input centred in place;
            # otherwise a centring copy to [C, N*P] (the 1x1 "im2col" duplicates no tap) feeds one GEMM
            flat = case["group"] == 1 and case["strides"] == (1, 1) and case["x"].shape[0] == 1
            assert (spy["_center"] > 0, spy["_im2col_centered"] > 0) == (flat, not flat)


@settings(max_examples=25)
@given(conv_fast_cases("im2col"), st.booleans(), st.sampled_from(["hwc", "chw"]), st.sampled_from([0.0, 1e9]))
def test_im2col_conv_both_pair_modes(case, pair, order, dense):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mac, "DENSE_NS_PER_PAIR", dense)
        _check_conv(case, pair, order)


@settings(max_examples=30)
@given(conv_fast_cases("depthwise"), st.booleans(), st.sampled_from([0.0, 1e9]))
def test_depthwise_direct_kernel(case, pair, dense):
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp, mac, "_depthwise", "_exact_matmul")
        mp.setattr(mac, "DENSE_NS_PER_PAIR", dense)
        _check_conv(case, pair)
        assert spy["_exact_matmul"] == 0
        assert spy["_depthwise"] <= 1


def test_depthwise_float64_and_int64_dtypes():
    rng = np.random.default_rng(7)
    x16 = rng.integers(-32768, 32768, (2, 3, 6, 5)).astype(np.int16)  # 9 * 65535^2 > 2^24: float64
    w16 = rng.integers(-32768, 32768, (3, 1, 3, 3)).astype(np.int16)
    args = (None, (2, 2), (1, 0, 1, 2), (1, 1), 3)
    np.testing.assert_array_equal(conv_acc(x16, 5, w16, -7, *args), conv_ref(x16, 5, w16, -7, *args))
    x32 = rng.integers(-(2**30), 2**30, (1, 2, 4, 4)).astype(np.int64)  # beyond float64: int64 kernel
    w32 = rng.integers(-(2**30), 2**30, (2, 1, 2, 2)).astype(np.int64)
    args = (None, (1, 1), (0, 0, 0, 0), (1, 1), 2)
    assert mac._exact_dtype(4, 2**31, 2**30)[0] == np.int64
    np.testing.assert_array_equal(conv_acc(x32, 3, w32, 0, *args), conv_ref(x32, 3, w32, 0, *args))


@settings(max_examples=10)
@given(conv_fast_cases("im2col"), st.booleans())
def test_batch_slices(case, pair):
    """A tiny im2col budget: every image in its own slice (exact and pair operands)."""
    case = dict(case, x=np.concatenate([case["x"]] * 3))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mac, "COLS_BUDGET_BYTES", 1)
        spy = Spy(mp, mac, "_exact_matmul", "_pair_dense")
        _check_conv(case, pair)
        assert spy["_exact_matmul"] + spy["_pair_dense"] >= case["x"].shape[0] or case["w"].shape[1] == 1


def test_real_layer_sized_pointwise_pair_conv():
    """One case sized like a ShuffleNet layer (116 -> 116, 14 x 14, zero point 128), sparse and dense,
    against the plain int64 numpy definition (the Python reference would take minutes)."""
    rng = np.random.default_rng(3)
    x = np.clip(rng.normal(128, 40, (2, 116, 14, 14)), 0, 255).astype(np.uint8)
    w = np.clip(rng.normal(0, 40, (116, 116, 1, 1)), -128, 127).astype(np.int8)
    xa = x.astype(np.int64).reshape(2, 58, 2, 196)
    wa = w.astype(np.int64).reshape(116, 58, 2)
    p = xa[:, None, :, 0, :] * wa[None, :, :, 0, None] + xa[:, None, :, 1, :] * wa[None, :, :, 1, None]
    raw = np.clip(p, -32768, 32767).sum(axis=2)  # [N, M, P] pair-saturated raw sums
    ref = raw - 128 * w.astype(np.int64).sum(axis=(1, 2, 3))[None, :, None]
    ref = ref.reshape(2, 116, 14, 14)
    assert (p > 32767).any() or (p < -32768).any()
    for dense in (0.0, 1e9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mac, "DENSE_NS_PER_PAIR", dense)
            out = conv_acc(x, 128, w, 0, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, pair_saturation=True)
        np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------------------------------------
# accumulator policy and float32 requantization (vectorized kernels)
# ---------------------------------------------------------------------------------------------
@settings(max_examples=20)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=300), st.sampled_from([16, 32]),
       st.sampled_from(["saturate", "wrap"]))
def test_apply_accumulator_one_pass_count(vals, bits, policy):
    acc = np.array(vals, np.int64).reshape(-1, 1)
    out, count = apply_accumulator(acc, bits, policy)
    ref, ref_count = accumulator_ref(acc, bits, policy)
    np.testing.assert_array_equal(out, ref)
    assert count == ref_count


@settings(max_examples=20)
@given(st.sampled_from([(3, 5, 17), (4, 9, 1), (1, 1, 40), (2, 64, 3)]), st.sampled_from([None, 1, 2]),
       st.integers(-5, 5), st.data())
def test_requantize_float32_vectorized_layouts(shape, axis, zp, data):
    """Channels-last (inner 1) and channels-middle layouts, per tensor and per channel, against the
    element-by-element reference; accumulators include the int32 ends and .5 ties (scale 0.5)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    acc = rng.integers(-(2**31), 2**31, shape, dtype=np.int64)
    acc.flat[:4] = [-(2**31), 2**31 - 1, 5, -7][:acc.size]
    n = 1 if axis is None else shape[axis]
    scales = np.float32(rng.choice([0.5, 2.0**-20, 1e-3, 3.0], n))
    for lo, hi in ((-128, 127), (-(2**31), 2**31 - 1)):
        out = requantize_float32(acc, scales, axis, zp, lo, hi)
        np.testing.assert_array_equal(out, requantize_float32_ref(acc, scales, axis, zp, lo, hi))


def test_requantize_float32_rejects_out_of_domain_after_the_kernel():
    from runtime.errors import HwsimError

    with pytest.raises(HwsimError, match=r"must lie in \[-2147483648, 2147483647\].*2147483648\]"):
        requantize_float32(np.array([0, 2**31]), np.float32([1.0]), None, 0, -128, 127)


# ---------------------------------------------------------------------------------------------
# MaxPool plane kernel (runtime.kernels.pooling)
# ---------------------------------------------------------------------------------------------
@settings(max_examples=30)
@given(st.sampled_from(["uint8", "int8", "int16"]), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 1), st.data())
def test_max_pool_plane_kernel_equals_reference(dt, kh, kw, s, d, ceil, data):
    from runtime.kernels import pooling
    from tests.reference_kernels import max_pool_ref

    pads = (data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kw - 1)),
            data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kw - 1)))
    h = data.draw(st.integers(max(1, (kh - 1) * d + 1 - pads[0] - pads[2]), 9))
    w = data.draw(st.integers(max(1, (kw - 1) * d + 1 - pads[1] - pads[3]), 9))
    x = data.draw(int_tensors((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), h, w), dt))
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp, pooling, "_max_pool_planes")
        out = pooling.max_pool(x, (kh, kw), (s, s), pads, (d, d), ceil)
        assert spy["_max_pool_planes"] == 1
    np.testing.assert_array_equal(out, max_pool_ref(x, (kh, kw), (s, s), pads, (d, d), ceil))


@settings(max_examples=25)
@given(st.sampled_from([(2, 6, 11), (5, 7, 1), (1, 1, 30)]), st.sampled_from([None, 1]), st.integers(-3, 3),
       st.sampled_from([(np.uint8, 0, 255), (np.int8, -128, 127), (np.int16, -32768, 32767)]), st.data())
def test_requantize_float32_counted_one_pass(shape, axis, zp, out_t, data):
    """Equals the separate passes it replaces: wide requantization, saturation count against the
    dtype range, clamp to the (fused activation) range, cast."""
    from runtime.kernels.requant import requantize_float32_counted

    dt, dmin, dmax = out_t
    lo = data.draw(st.integers(dmin, dmax))
    hi = data.draw(st.integers(lo, dmax))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    acc = rng.integers(-(2**20), 2**20, shape, dtype=np.int64)
    n = 1 if axis is None else shape[axis]
    scales = np.float32(rng.choice([0.5, 2.0**-12, 1e-3, 1.0], n))
    wide = requantize_float32_ref(acc, scales, axis, zp, -(2**31), 2**31 - 1)
    y, count = requantize_float32_counted(acc, scales, axis, zp, lo, hi, dmin, dmax, dt)
    assert y.dtype == dt and count == int(np.count_nonzero((wide < dmin) | (wide > dmax)))
    np.testing.assert_array_equal(y, np.clip(wide, lo, hi))
