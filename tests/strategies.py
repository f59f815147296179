"""The project's one module of hypothesis strategies.

Strategies draw only inputs that are inside the documented domain of the function under test
(e.g. accumulators that cannot overflow int64 in a reference). Sections are grouped by subject.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# integers (fixed-point helpers)
# ---------------------------------------------------------------------------------------------
int32s = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX, 1 << 30, -(1 << 30)]),
)
# small accumulators: with multiplier 2^30 they land on .5 ties often
small_ints = st.integers(-64, 64)
# |x| < 2^47: domain of the int64-accumulator MBQM
INT47_LIMIT = 1 << 47
int47s = st.one_of(
    st.integers(-INT47_LIMIT + 1, INT47_LIMIT - 1),
    int32s,
    small_ints,
    st.sampled_from([-INT47_LIMIT + 1, INT47_LIMIT - 1, -(1 << 40), 1 << 40]),
)
# quantized multipliers: [2^30, 2^31-1] (what QuantizeMultiplier produces), 0, anything in [0, 2^31-1],
# and the 15-bit reduction's edges (0x7FFF0000)
multipliers = st.one_of(
    st.integers(1 << 30, INT32_MAX),
    st.integers(0, INT32_MAX),
    st.sampled_from([0, 1, 1 << 30, (1 << 30) + 1, 0x7FFF0000 - 1, 0x7FFF0000, INT32_MAX]),
)
shifts_double = st.integers(-31, 31)
shifts_single = st.integers(-31, 30)
shifts_int64 = st.integers(-31, 7)
SHIFTS_BY_ROUNDING = {"double": shifts_double, "single": shifts_single, "int64": shifts_int64}
pot_exponents = st.integers(0, 31)
# finite, non-negative real multipliers, including exact powers of two, the 2^31 carry (q*2^31 rounds up
# to 2^31) and the flush boundary (e = -31 kept, e = -32 flushed)
real_multipliers = st.one_of(
    st.floats(min_value=2.0**-40, max_value=2.0**40, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(-40, 40).map(lambda k: 2.0**k),
    st.integers(-40, 40).map(lambda k: (1.0 - 2.0**-33) * 2.0**k),
    st.sampled_from([0.0, 5e-324, 2.0**-32, 2.0**-33, 1.0 - 2.0**-53, 2.0**30, 1e300]),
)
# float32 scales for the ORT path: exact ties (powers of two) and arbitrary finite non-negative float32
float32_scales = st.one_of(
    st.integers(-12, 4).map(lambda k: float(np.float32(2.0**k))),
    st.floats(min_value=0.0, max_value=1e3, width=32, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.0, width=32, allow_nan=False, allow_infinity=False),
)


@st.composite
def output_ranges(draw):
    """(zero_point, qmin, qmax): a storage type's range (int32: unclamped) or a sub-range of it (fused
    activation), zero point inside it."""
    lo, hi = draw(st.sampled_from([(-128, 127), (0, 255), (-32768, 32767), (0, 65535), (INT32_MIN, INT32_MAX)]))
    if draw(st.booleans()):
        lo, hi = sorted(draw(st.lists(st.integers(lo, hi), min_size=2, max_size=2)))
    zp = draw(st.integers(lo, hi) if hi - lo <= 1 << 16 else st.one_of(st.sampled_from([0, -5, 7]), st.integers(lo, hi)))
    return zp, lo, hi


@st.composite
def _channel_layout(draw):
    """(shape, axis, n_params): 1-4 dims of 1-4 each; per tensor (axis maybe None) or per channel."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    if draw(st.booleans()):
        return shape, axis, shape[axis]
    return shape, draw(st.one_of(st.none(), st.just(axis))), 1


@st.composite
def requant_fixed_point_cases(draw, rounding: str | None = None):
    """Keyword arguments of ``runtime.kernels.requant.requantize_fixed_point`` inside its domain."""
    from hypothesis.extra import numpy as hnp

    rounding = rounding or draw(st.sampled_from(["double", "single", "int64"]))
    shape, axis, n = draw(_channel_layout())
    elems = int47s if rounding == "int64" else st.one_of(int32s, small_ints)
    acc = draw(hnp.arrays(np.int64, shape, elements=elems))
    zp, qmin, qmax = draw(output_ranges())
    return dict(
        acc=acc,
        multipliers=np.array(draw(st.lists(multipliers, min_size=n, max_size=n)), dtype=np.int32),
        shifts=np.array(draw(st.lists(SHIFTS_BY_ROUNDING[rounding], min_size=n, max_size=n)), dtype=np.int32),
        axis=axis, zero_point=zp, qmin=qmin, qmax=qmax, rounding=rounding,
    )


@st.composite
def requant_float32_cases(draw):
    """Keyword arguments of ``runtime.kernels.requant.requantize_float32`` inside its domain."""
    from hypothesis.extra import numpy as hnp

    shape, axis, n = draw(_channel_layout())
    acc = draw(hnp.arrays(np.int64, shape, elements=st.one_of(int32s, small_ints)))
    zp, qmin, qmax = draw(output_ranges())
    scales = np.array(draw(st.lists(float32_scales, min_size=n, max_size=n)), dtype=np.float32)
    return dict(acc=acc, scales=scales, axis=axis, zero_point=zp, qmin=qmin, qmax=qmax)

# ---------------------------------------------------------------------------------------------
# encodings and quantize/dequantize
# ---------------------------------------------------------------------------------------------
QUANT_DTYPES = ("int4", "uint4", "int8", "uint8", "int16", "uint16", "int32")
SCHEMES = ("asymmetric", "symmetric", "strict_symmetric", "unsigned_symmetric")
ROUNDING_MODES = ("half_to_even", "half_away_from_zero", "half_up", "half_down")
rounding_modes = st.sampled_from(ROUNDING_MODES)
# scales: exact powers of two (x = (k + .5) * s is then an exact tie) and any float32 in [2^-20, 2^8]:
# grid values s * (q - z) with |q - z| <= 2^32 stay finite, normal float32 and x / s cannot overflow
quant_scales = st.one_of(
    st.integers(-20, 8).map(lambda k: 2.0**k),
    st.floats(2.0**-20, 2.0**8, width=32),
)
# range endpoints: float32 values within +-1e4, plus zeros and values below the MIN_RANGE floor
range_values = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, 1e-7, -1e-7, 3e-6, 1.0, -1.0]),
)


@st.composite
def quant_layouts(draw, max_dims: int = 3, max_side: int = 5):
    """(tensor shape, granularity, parameter shape): a granularity that fits the shape (per tensor,
    per axis with a possibly negative axis, or ONNX-blocked with a possibly ragged last block)."""
    from runtime.encoding import PerAxis, PerBlock, PerTensor

    kind = draw(st.sampled_from(["tensor", "axis", "block"]))
    ndim = draw(st.integers(0 if kind == "tensor" else 1, max_dims))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    if kind == "tensor":
        return shape, PerTensor(), ()
    axis = draw(st.integers(-ndim, ndim - 1))
    if kind == "axis":
        return shape, PerAxis(axis), (shape[axis],)
    block = draw(st.integers(1, max_side))
    a = axis % ndim
    return shape, PerBlock(axis, block), tuple(-(-d // block) if i == a else d for i, d in enumerate(shape))


@st.composite
def encodings(draw, dtypes=QUANT_DTYPES, narrow: bool = True):
    """(Encoding, tensor shape): any valid encoding, full or (``narrow``) narrowed usable range, zero
    points anywhere in it, scales from ``quant_scales``."""
    from hypothesis.extra import numpy as hnp

    from runtime.dtypes import qtype
    from runtime.encoding import Encoding

    shape, gran, pshape = draw(quant_layouts())
    t = qtype(draw(st.sampled_from(dtypes)))
    qmin, qmax = t.qmin, t.qmax
    if narrow and draw(st.booleans()):
        qmin, qmax = sorted(draw(st.lists(st.integers(t.qmin, t.qmax), min_size=2, max_size=2)))
    zp = draw(hnp.arrays(np.int64, pshape, elements=st.one_of(st.integers(qmin, qmax), st.sampled_from([qmin, qmax]))))
    scale = draw(hnp.arrays(np.float32, pshape, elements=quant_scales))
    return Encoding(scale, zp, t, gran, qmin, qmax), shape


@st.composite
def quantize_inputs(draw, enc, shape, specials: bool = True):
    """float32 tensor of ``shape`` for ``enc``: grid points, exact .5 ties and their neighbours,
    values in between, up to two steps beyond both ends, and (``specials``) +-inf, +-0, +-1e30."""
    from hypothesis.extra import numpy as hnp

    s, z = enc.broadcast_params(shape)
    k = draw(hnp.arrays(np.int64, shape, elements=st.integers(enc.qmin - 2, enc.qmax + 2)))
    frac = draw(hnp.arrays(np.float64, shape, elements=st.one_of(
        st.sampled_from([0.0, 0.5, -0.5, 0.25, 0.5 - 2.0**-20, -0.5 + 2.0**-20]),
        st.floats(-0.5, 0.5),
    )))
    x = ((k - z + frac) * s.astype(np.float64)).astype(np.float32)
    if specials and x.size and draw(st.booleans()):
        mask = draw(hnp.arrays(np.bool_, shape))
        vals = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(
            [np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30])))
        x = np.where(mask, vals, x).astype(np.float32)
    return np.asarray(x, dtype=np.float32)  # 0-d arithmetic gives numpy scalars


@st.composite
def quantize_cases(draw, dtypes=QUANT_DTYPES, specials: bool = True, narrow: bool = True):
    """(Encoding, float32 x) with x from ``quantize_inputs``."""
    enc, shape = draw(encodings(dtypes, narrow))
    return enc, draw(quantize_inputs(enc, shape, specials))


@st.composite
def range_encoding_args(draw, dtypes=QUANT_DTYPES, schemes=SCHEMES):
    """(keyword arguments of ``encoding_from_range``, tensor shape): min <= max arrays shaped like the
    granularity's scale, all non-negative half of the time (the unsigned grid of unsigned_symmetric)."""
    from hypothesis.extra import numpy as hnp

    shape, gran, pshape = draw(quant_layouts())
    a = draw(hnp.arrays(np.float64, pshape, elements=range_values))
    b = draw(hnp.arrays(np.float64, pshape, elements=range_values))
    if draw(st.booleans()):
        a, b = np.abs(a), np.abs(b)
    return dict(min_val=np.minimum(a, b), max_val=np.maximum(a, b), dtype=draw(st.sampled_from(dtypes)),
                scheme=draw(st.sampled_from(schemes)), granularity=gran), shape


# ---------------------------------------------------------------------------------------------
# kernels (shapes, integer tensors)
# ---------------------------------------------------------------------------------------------
# value ranges of the integer storage types the MAC/pool/elementwise kernels see (int4 held in int8)
KERNEL_DTYPES = {"uint8": (np.uint8, 0, 255), "int8": (np.int8, -128, 127), "int16": (np.int16, -32768, 32767),
                 "int4": (np.int8, -8, 7)}


@st.composite
def int_tensors(draw, shape, dtype_name: str):
    """An integer tensor of ``shape``: random values, both range ends often, or all qmax / all qmin."""
    from hypothesis.extra import numpy as hnp

    dt, lo, hi = KERNEL_DTYPES[dtype_name]
    fill = draw(st.sampled_from(["random", "random", "random", "qmax", "qmin"]))
    if fill == "qmax":
        return np.full(shape, hi, dt)
    if fill == "qmin":
        return np.full(shape, lo, dt)
    return draw(hnp.arrays(dt, shape, elements=st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))))


def _zero_points(dtype_name: str, n: int | None = None):
    """A zero point in the dtype's range (0 and both ends often); ``n`` values when ``n`` is given."""
    _, lo, hi = KERNEL_DTYPES[dtype_name]
    one = st.one_of(st.just(0), st.sampled_from([lo, hi]), st.integers(lo, hi))
    return one if n is None else st.lists(one, min_size=n, max_size=n).map(lambda v: np.array(v, np.int64))


@st.composite
def matmul_cases(draw):
    """Keyword arguments of ``matmul_acc``: 1-D or batched (broadcast) A [.., M, K], B [.., K, N], K <= 40,
    scalar or per-column B zero points, optional int32 bias, u8 x s8 half of the time."""
    a_dt, b_dt = draw(st.one_of(st.just(("uint8", "int8")), st.tuples(*[st.sampled_from(list(KERNEL_DTYPES))] * 2)))
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 40)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["2d", "2d", "batched", "a1d", "b1d"]))
    if kind == "batched":
        ba, bb = draw(st.sampled_from([((2,), (2,)), ((2,), ()), ((), (2,)), ((1,), (2,)), ((2, 1), (1,)), ((2,), (1,))]))
        a_shape, b_shape = ba + (m, k), bb + (k, n)
    else:
        a_shape = (k,) if kind == "a1d" else (m, k)
        b_shape = (k,) if kind == "b1d" else (k, n)
    n_out = 1 if kind == "b1d" else n
    zb = draw(st.one_of(_zero_points(b_dt), _zero_points(b_dt, n_out)))
    bias = draw(st.one_of(st.none(), st.lists(st.integers(-(2**20), 2**20), min_size=n_out, max_size=n_out)))
    return dict(a=draw(int_tensors(a_shape, a_dt)), a_zero_point=draw(_zero_points(a_dt)),
                b=draw(int_tensors(b_shape, b_dt)), b_zero_point=zb,
                bias=None if bias is None else np.array(bias, np.int32))


@st.composite
def conv_cases(draw, depthwise: bool | None = None):
    """Keyword arguments of ``conv_acc``: 1-D or 2-D, batch <= 2, channels <= 6, spatial <= 7, kernel <= 3,
    strides/dilations 1-2, asymmetric pads < kernel, groups, depthwise with depth multiplier 1-2,
    scalar or per-output-channel weight zero points, optional bias, both pair orders."""
    x_dt, w_dt = draw(st.one_of(st.just(("uint8", "int8")), st.tuples(*[st.sampled_from(list(KERNEL_DTYPES))] * 2)))
    nd = draw(st.sampled_from([1, 2]))
    depthwise = draw(st.booleans()) if depthwise is None else depthwise
    if depthwise:
        c = draw(st.integers(1, 4))
        group, cg, m = c, 1, c * draw(st.integers(1, 2))
    else:
        group = draw(st.sampled_from([1, 1, 2, 3]))
        cg = draw(st.integers(1, 6 // group))
        c = cg * group
        m = group * draw(st.integers(1, 6 // group))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel for _ in range(1)) + \
        tuple(draw(st.integers(0, k - 1)) for k in kernel)
    spatial = tuple(draw(st.integers(max(1, (k - 1) * d + 1 - pb - pe), 7))
                    for k, d, pb, pe in zip(kernel, dil, pads[:nd], pads[nd:]))
    batch = draw(st.integers(1, 2))
    zw = draw(st.one_of(_zero_points(w_dt), _zero_points(w_dt, m)))
    bias = draw(st.one_of(st.none(), st.lists(st.integers(-(2**20), 2**20), min_size=m, max_size=m)))
    return dict(x=draw(int_tensors((batch, c) + spatial, x_dt)), x_zero_point=draw(_zero_points(x_dt)),
                w=draw(int_tensors((m, cg) + kernel, w_dt)), w_zero_point=zw,
                bias=None if bias is None else np.array(bias, np.int32),
                strides=strides, pads=pads, dilations=dil, group=group)


@st.composite
def pool_cases(draw, dtypes=("uint8", "int8", "int16", "int4")):
    """(x, kernel, strides, pads, dilations, ceil_mode): 1-D or 2-D, batch <= 2, channels <= 3, spatial <= 7,
    pads < kernel, the padded input at least one (dilated) window wide."""
    dt = draw(st.sampled_from(dtypes))
    nd = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel) + tuple(draw(st.integers(0, k - 1)) for k in kernel)
    spatial = tuple(draw(st.integers(max(1, (k - 1) * d + 1 - pb - pe), 7))
                    for k, d, pb, pe in zip(kernel, dil, pads[:nd], pads[nd:]))
    x = draw(int_tensors((draw(st.integers(1, 2)), draw(st.integers(1, 3))) + spatial, dt))
    return dict(x=x, kernel=kernel, strides=strides, pads=pads, dilations=dil,
                ceil_mode=draw(st.integers(0, 1))), dt


@st.composite
def broadcast_pairs(draw, dtypes):
    """(a, b, dtype name): two small integer tensors of one dtype whose shapes broadcast."""
    dt = draw(st.sampled_from(dtypes))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    b_shape = tuple(1 if draw(st.booleans()) else d for d in shape)[draw(st.integers(0, len(shape))):]
    a, b = draw(int_tensors(shape, dt)), draw(int_tensors(b_shape, dt))
    return (a, b, dt) if draw(st.booleans()) else (b, a, dt)


@st.composite
def add_fixed_point_cases(draw):
    """Keyword arguments of ``add_fixed_point`` in TFLite's domain: left shift 20 (8-bit) or 15 (16-bit,
    zero points 0), input multipliers <= 1 (shift <= 0), so every intermediate fits int32."""
    a, b, dt = draw(broadcast_pairs(["uint8", "int8", "int16"]))
    _, lo, hi = KERNEL_DTYPES[dt]
    mult = st.integers(1 << 30, INT32_MAX)
    qmin, qmax = draw(st.sampled_from([(-128, 127), (0, 255), (-32768, 32767)]))
    act_lo, act_hi = sorted(draw(st.lists(st.integers(qmin, qmax), min_size=2, max_size=2)))
    act_lo, act_hi = draw(st.sampled_from([(qmin, qmax), (act_lo, act_hi)]))
    zps = st.just(0) if dt == "int16" else _zero_points(dt)  # TFLite's int16 Add: zero points 0
    return dict(a=a, b=b, z1=draw(zps), z2=draw(zps),
                left_shift=15 if dt == "int16" else 20, m1=draw(mult), e1=draw(st.integers(-31, 0)),
                m2=draw(mult), e2=draw(st.integers(-31, 0)), mo=draw(mult), eo=draw(st.integers(-31, 2)),
                zo=draw(st.integers(qmin, qmax)), lo=act_lo, hi=act_hi, qmin=qmin, qmax=qmax,
                single=draw(st.booleans()))


@st.composite
def mul_fixed_point_cases(draw):
    """Keyword arguments of ``mul_fixed_point``: 8-bit inputs with any zero points, or int16 with zero
    points 0, so the raw product fits int32; any multiplier and shift in [-31, 30]."""
    a, b, dt = draw(broadcast_pairs(["uint8", "int8", "int4", "int16"]))
    z = (lambda: 0) if dt == "int16" else (lambda: draw(_zero_points(dt)))
    qmin, qmax = draw(st.sampled_from([(-128, 127), (0, 255), (-32768, 32767)]))
    return dict(a=a, b=b, z1=z(), z2=z(), m=draw(multipliers), e=draw(st.integers(-31, 30)),
                zo=draw(st.integers(qmin, qmax)), lo=qmin, hi=qmax, qmin=qmin, qmax=qmax,
                single=draw(st.booleans()))


float32_ratios = st.one_of(st.integers(-12, 6).map(lambda k: float(np.float32(2.0**k))),
                           st.floats(2.0**-12, 2.0**6, width=32))


@st.composite
def float32_binary_cases(draw, kind: str):
    """Keyword arguments of ``add_float32`` (kind "Add") or ``mul_float32`` ("Mul"): float32 ratios in
    [2^-12, 2^6] (exact-tie powers of two often), so every rounded value fits int64."""
    a, b, dt = draw(broadcast_pairs(["uint8", "int8", "int16"]))
    qmin, qmax = draw(st.sampled_from([(-128, 127), (0, 255), (-32768, 32767)]))
    common = dict(a=a, b=b, za=draw(_zero_points(dt)), zb=draw(_zero_points(dt)), zc=draw(st.integers(qmin, qmax)),
                  lo=qmin, hi=qmax, qmin=qmin, qmax=qmax)
    if kind == "Add":
        return dict(common, ra=np.float32(draw(float32_ratios)), rb=np.float32(draw(float32_ratios)))
    return dict(common, r=np.float32(draw(float32_ratios)))
