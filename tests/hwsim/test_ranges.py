"""hwsim.ranges: calibration observers.

What is pinned down, and how tightly:

- minmax: exact running min/max; symmetric schemes give ``(-a, a)``, the unsigned grid ``(0, a)``.
- percentile: within one (final) bin width of ``numpy.percentile`` on all the data seen.
- streaming histogram: its counts equal ``numpy.histogram`` of all the data on its final edges
  (exact, no redistribution); its bin width is at most ``2 (max - min) / (bins - 3)``; the state
  has the same size after 1 and 200 batches.
- the expected-error model: within a stated bound of the error measured with
  ``runtime.quantize.fake_quantize``: a value ``x`` in a bin of width ``w`` is modelled by the
  error over its bin, and ``|phi(y) - phi(x)| <= 2 (max(s/2, |e(x)|) + w) w`` for ``|y - x| <= w``.
- mse: its model cost never exceeds min-max's (min-max is a candidate), so its measured MSE is at
  most min-max's plus both model bounds; strictly better on heavy-tailed data.
- tf_enhanced: picks one of AIMET's candidates; SQNR >= min-max's on outlier data.
- per channel: the same results as one per-tensor observer per channel.
- NaN/Inf, empty batches and bad arguments are refused with messages that name the tensor.
"""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hwsim.ranges as ranges
from hwsim.ranges import SCHEMES, TF_ENHANCED_GAMMA, make_observer
from runtime.dtypes import qtype
from runtime.encoding import MIN_RANGE, PerTensor, encoding_from_range
from runtime.errors import DataError, EncodingError, HwsimError
from runtime.quantize import fake_quantize

ENCODING_SCHEMES = ("asymmetric", "symmetric", "strict_symmetric", "unsigned_symmetric")
RANGE_DTYPES = ("int4", "uint4", "int8", "uint8", "int16")


# ---------------------------------------------------------------------------------------------
# strategies (inputs: float32 batches of any scale, constant batches, one-sided data)
# ---------------------------------------------------------------------------------------------
values = st.one_of(
    st.floats(-1.0, 1.0, width=32),
    st.floats(-1e3, 1e3, width=32),
    st.sampled_from([0.0, 1.0, -2.5, 3.0]),
)


@st.composite
def batch_lists(draw, max_batches: int = 6, max_size: int = 40):
    """1..max_batches float32 arrays; sometimes all non-negative, sometimes one batch constant."""
    n = draw(st.integers(1, max_batches))
    out = [draw(hnp.arrays(np.float32, st.integers(1, max_size), elements=values)) for _ in range(n)]
    if draw(st.booleans()):
        out = [np.abs(b) for b in out]
    if draw(st.booleans()):
        out[0] = np.full(out[0].shape, out[0][0], np.float32)
    return out


def feed(obs, batches):
    for b in batches:
        obs.update(torch.from_numpy(np.ascontiguousarray(b)))
    return obs


def family(scheme: str, data: np.ndarray) -> str:
    if scheme == "asymmetric":
        return "asymmetric"
    return "unsigned" if scheme == "unsigned_symmetric" and data.min() >= 0 else "symmetric"


def grid_of(lo, hi, dt, scheme):
    """(encoding, s, L, H): the target grid of a range and its ends."""
    enc = encoding_from_range(lo, hi, dt, scheme)
    s = float(enc.scale)
    z = int(enc.zero_point)
    return enc, s, s * (enc.qmin - z), s * (enc.qmax - z)


def measured(x: np.ndarray, enc) -> np.ndarray:
    """Per-value error of fake quantization with the encoding (float64)."""
    return fake_quantize(x.astype(np.float32), enc, "half_to_even").astype(np.float64) - x.astype(np.float64)


def model_bound(x: np.ndarray, err: np.ndarray, s: float, w: float) -> float:
    """Bound on |model - measured| mean squared error (module docstring), plus float32 slack."""
    slack = 1e-6 * (s + float(np.max(np.abs(x)))) ** 2
    return float(np.mean(2 * (np.maximum(s / 2, np.abs(err)) + w) * w)) + slack


def bin_width(obs, channel: int = 0) -> float:
    _, edges = obs.histogram(channel)
    return float(edges[1] - edges[0]) if len(edges) > 2 else 0.0


# ---------------------------------------------------------------------------------------------
# minmax
# ---------------------------------------------------------------------------------------------
@given(batch_lists(), st.sampled_from(ENCODING_SCHEMES))
def test_minmax_exact(batches, scheme):
    obs = feed(make_observer("minmax", "int8", scheme, name="t"), batches)
    x = np.concatenate(batches).astype(np.float64)
    lo, hi = obs.compute()
    assert lo.shape == () and hi.shape == ()
    a = np.abs(x).max()
    want = {"asymmetric": (x.min(), x.max()), "symmetric": (-a, a), "unsigned": (0.0, a)}[family(scheme, x)]
    assert (float(lo), float(hi)) == want
    assert obs.n_batches == len(batches) and obs.n_values == x.size


@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2), st.integers(0, 2**32 - 1))
def test_minmax_per_channel(c, a, b, axis, seed):
    shape = [a, b]
    shape.insert(axis, c)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(np.float32) * 10 ** rng.uniform(-3, 3) for _ in range(3)]
    obs = feed(make_observer("minmax", "int8", "asymmetric", axis=axis - 3), xs)  # negative axis
    lo, hi = obs.compute()
    allx = np.concatenate(xs, axis=(axis + 1) % 3)
    other = tuple(i for i in range(3) if i != axis)
    assert lo.shape == hi.shape == (c,)
    np.testing.assert_array_equal(lo, allx.min(axis=other))
    np.testing.assert_array_equal(hi, allx.max(axis=other))
    assert obs.encoding().scale.shape == (c,)


# ---------------------------------------------------------------------------------------------
# percentile
# ---------------------------------------------------------------------------------------------
@given(batch_lists(), st.sampled_from(ENCODING_SCHEMES), st.floats(50.0, 100.0), st.sampled_from([8, 33, 2048]))
def test_percentile_within_one_bin(batches, scheme, p, bins):
    obs = feed(make_observer("percentile", "int8", scheme, percentile=p, bins=bins), batches)
    x = np.concatenate(batches).astype(np.float64)
    lo, hi = obs.compute()
    w = bin_width(obs)
    tol = w * (1 + 1e-9) + 1e-12 * np.abs(x).max()
    fam = family(scheme, x)
    if fam == "asymmetric":
        assert abs(float(lo) - np.percentile(x, 100.0 - p)) <= tol
        assert abs(float(hi) - np.percentile(x, p)) <= tol
        assert x.min() <= lo <= hi <= x.max()
    else:
        assert abs(float(hi) - np.percentile(np.abs(x), p)) <= tol
        assert float(lo) == (0.0 if fam == "unsigned" else -float(hi))
    if p == 100.0:
        assert float(hi) == (x.max() if fam == "asymmetric" else np.abs(x).max())


@pytest.mark.parametrize("x, scheme, p, want", [
    ([-1.0, 3.0], "symmetric", 50.0, (-2.0, 2.0)),  # |x| = [1, 3]: the smallest |x| is not the histogram's edge
    ([-1.0, 3.0], "asymmetric", 75.0, (0.0, 2.0)),
    ([0.0, 1.0, 2.0, 3.0, 4.0], "unsigned_symmetric", 60.0, (0.0, 2.4)),
    ([5.0] * 4, "strict_symmetric", 99.0, (-5.0, 5.0)),
])
def test_percentile_small_cases(x, scheme, p, want):
    obs = feed(make_observer("percentile", "int8", scheme, percentile=p), [np.float32(x)])
    np.testing.assert_allclose([float(v) for v in obs.compute()], want, atol=bin_width(obs) if len(set(x)) > 1 else 0)
    assert bin_width(obs) < 0.01 or len(set(x)) == 1


def test_percentile_bound_is_tight_enough_to_matter():
    # 10^5 Gaussian values, 2048 bins: the 99.99th percentile lands within one bin (~0.004) of numpy's
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000).astype(np.float32)
    obs = feed(make_observer("percentile", "int8", "asymmetric", percentile=99.99), np.array_split(x, 7))
    lo, hi = obs.compute()
    w = bin_width(obs)
    assert w < 0.01
    assert abs(float(hi) - np.percentile(x.astype(np.float64), 99.99)) <= w
    assert abs(float(lo) - np.percentile(x.astype(np.float64), 0.01)) <= w


# ---------------------------------------------------------------------------------------------
# streaming histogram
# ---------------------------------------------------------------------------------------------
def drifting_batches(n: int, seed: int, channels: int | None = None):
    """n batches whose range drifts and grows (and a constant first batch), fixed seed."""
    rng = np.random.default_rng(seed)
    shape = (64,) if channels is None else (channels, 64)
    per_channel = 1.0 if channels is None else 1.0 + np.arange(channels)[:, None]
    out = [np.zeros(shape, np.float32)]
    for i in range(1, n):
        out.append((rng.laplace(0.02 * i, 1.0 + 0.05 * i, shape) * per_channel).astype(np.float32))
    return out


@pytest.mark.parametrize("bins", [64, 2048])
def test_streaming_counts_exact_memory_bounded(bins):
    batches = drifting_batches(200, 1)
    obs = make_observer("percentile", "int8", "asymmetric", bins=bins)
    sizes = []
    for b in batches:
        obs.update(torch.from_numpy(b))
        sizes.append(obs.state_nbytes)
    assert len(set(sizes)) == 1  # no growth with batches
    x = np.concatenate(batches).astype(np.float64)
    counts, edges = obs.histogram()
    assert len(counts) == bins and counts.sum() == x.size == obs.n_values
    np.testing.assert_array_equal(counts, np.histogram(x, bins=edges)[0])  # exact, nothing redistributed
    w_stream = edges[1] - edges[0]
    span = x.max() - x.min()
    assert w_stream <= 2 * span / (bins - 3)
    # against one histogram over all the data at once: each percentile within its own bin width
    one = make_observer("percentile", "int8", "asymmetric", bins=bins)
    one.update(torch.from_numpy(x))
    w_one = bin_width(one)
    assert w_one == pytest.approx(span / (bins - 1), rel=1e-9)
    for a, b in zip(obs.compute(), one.compute()):
        assert abs(float(a) - float(b)) <= w_stream + w_one


def test_streaming_per_channel_counts_exact():
    batches = drifting_batches(60, 2, channels=3)
    obs = feed(make_observer("mse", "int8", "symmetric", axis=0, bins=128), batches)
    x = np.concatenate(batches, axis=1).astype(np.float64)
    for c in range(3):
        counts, edges = obs.histogram(c)
        np.testing.assert_array_equal(counts, np.histogram(x[c], bins=edges)[0])
        assert edges[1] - edges[0] <= 2 * (x[c].max() - x[c].min()) / (128 - 3)
    assert obs.compute()[0].shape == (3,)


@pytest.mark.parametrize("scheme", ["mse", "tf_enhanced"])
def test_streaming_matches_one_shot(scheme):
    # the searched range from 100 streamed batches gives nearly the same measured error as one batch
    rng = np.random.default_rng(3)
    x = rng.laplace(size=50_000).astype(np.float32)
    x[::5000] *= 8
    stream = feed(make_observer(scheme, "int8", "asymmetric"), np.array_split(x, 100))
    one = feed(make_observer(scheme, "int8", "asymmetric"), [x])
    m_stream = np.mean(measured(x, stream.encoding()) ** 2)
    m_one = np.mean(measured(x, one.encoding()) ** 2)
    assert m_stream == pytest.approx(m_one, rel=0.02)


# ---------------------------------------------------------------------------------------------
# expected-error model, mse and tf_enhanced
# ---------------------------------------------------------------------------------------------
@given(batch_lists(max_batches=3, max_size=60), st.sampled_from(RANGE_DTYPES), st.sampled_from(ENCODING_SCHEMES),
       st.floats(0.05, 1.0), st.floats(0.05, 1.0), st.sampled_from([16, 2048]))
def test_expected_error_model_bound(batches, dt, scheme, f_lo, f_hi, bins):
    obs = feed(make_observer("mse", dt, scheme, bins=bins), batches)
    x = np.concatenate(batches).astype(np.float64)
    lo, hi = f_lo * min(x.min(), 0.0), f_hi * max(x.max(), 0.0)
    enc, s, _, _ = grid_of(lo, hi, dt, scheme)
    err = measured(x, enc)
    model = float(obs.expected_error(lo, hi))
    assert abs(model - np.mean(err ** 2)) <= model_bound(x, err, s, bin_width(obs))


@given(batch_lists(max_batches=3, max_size=60), st.sampled_from(RANGE_DTYPES), st.sampled_from(ENCODING_SCHEMES))
def test_mse_no_worse_than_minmax(batches, dt, scheme):
    x = np.concatenate(batches).astype(np.float64)
    mse = feed(make_observer("mse", dt, scheme), batches)
    mm = feed(make_observer("minmax", dt, scheme), batches)
    r_mse, r_mm = mse.compute(), mm.compute()
    assert mse.expected_error(*r_mse) <= mse.expected_error(*r_mm) * (1 + 1e-12) + 1e-300  # min-max is a candidate
    enc_mse, s_mse, _, _ = grid_of(*r_mse, dt, scheme)
    enc_mm, s_mm, _, _ = grid_of(*r_mm, dt, scheme)
    e_mse, e_mm = measured(x, enc_mse), measured(x, enc_mm)
    w = bin_width(mse)
    assert np.mean(e_mse ** 2) <= np.mean(e_mm ** 2) + model_bound(x, e_mse, s_mse, w) + model_bound(x, e_mm, s_mm, w)
    if scheme != "asymmetric":  # symmetric ranges
        lo, hi = (float(v) for v in r_mse)
        assert lo == (0.0 if family(scheme, x) == "unsigned" else -hi)


def heavy_tailed(seed: int = 0, n: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=n)
    x[rng.choice(n, 10, replace=False)] = rng.choice([-1.0, 1.0], 10) * 40.0  # outliers
    return x.astype(np.float32)


@pytest.mark.parametrize("dt, scheme", [("uint8", "asymmetric"), ("int8", "symmetric"),
                                        ("int8", "strict_symmetric"), ("int4", "symmetric"), ("int16", "symmetric")])
def test_mse_and_tf_enhanced_on_heavy_tails(dt, scheme):
    x = heavy_tailed()
    batches = np.array_split(x, 20)
    err = {k: np.mean(measured(x, feed(make_observer(k, dt, scheme), batches).encoding()) ** 2)
           for k in ("minmax", "mse", "tf_enhanced")}
    if dt == "int16":  # rounding noise is negligible: no reason to clip, within 1%
        assert err["mse"] <= err["minmax"] * 1.01 and err["tf_enhanced"] <= err["minmax"] * 1.01
    else:
        assert err["mse"] < 0.97 * err["minmax"]  # strictly better (int8 ~5-12%, int4 ~85%)
        assert err["tf_enhanced"] <= err["minmax"]  # SQNR >= min-max's
        assert err["mse"] <= err["tf_enhanced"] * 1.001  # gamma = 1 is the MSE optimum; gamma = 3 clips less


def test_expected_error_matches_measurement_on_dense_data():
    x = heavy_tailed(1)
    for dt, scheme in [("uint8", "asymmetric"), ("int16", "symmetric"), ("int4", "strict_symmetric")]:
        obs = feed(make_observer("tf_enhanced", dt, scheme), np.array_split(x, 5))
        for lo, hi in [obs.compute(), (float(x.min()), float(x.max())), (-3.0, 2.0)]:
            enc, *_ = grid_of(lo, hi, dt, scheme)
            assert float(obs.expected_error(lo, hi)) == pytest.approx(np.mean(measured(x, enc) ** 2), rel=0.01)


@given(batch_lists(max_batches=3), st.sampled_from(["int4", "int8", "uint8"]), st.sampled_from(ENCODING_SCHEMES))
def test_tf_enhanced_picks_an_aimet_candidate(batches, dt, scheme):
    x = np.concatenate(batches).astype(np.float64)
    obs = feed(make_observer("tf_enhanced", dt, scheme), batches)
    lo, hi = (float(v) for v in obs.compute())
    t = qtype(dt)
    fam = family(scheme, x)
    a_max = np.abs(x).max()
    if a_max == 0 or x.min() == x.max():  # a constant: its exact range
        if fam == "asymmetric":
            assert (lo, hi) == (x.min(), x.max())
        else:
            assert hi == (x.max() if fam == "unsigned" else a_max)
        return
    if fam == "asymmetric":  # delta * (offset .. offset + N), offset an integer in [-N, 0], inside the observed range
        N = 2**t.bits - 1
        delta = (hi - lo) / N
        assert lo <= 0 <= hi and hi - lo >= MIN_RANGE * (1 - 1e-9)
        assert lo / delta == pytest.approx(round(lo / delta), abs=1e-6) and -N <= round(lo / delta) <= 0
        obs_lo, obs_hi = min(x.min(), 0.0), max(x.max(), 0.0, min(x.min(), 0.0) + MIN_RANGE)
        obs_delta = (obs_hi - obs_lo) / N
        # clamped to the snapped observed range, then re-snapped: at most half a step beyond it
        slack = delta / 2 + 1e-9 * a_max
        assert obs_delta * round(obs_lo / obs_delta) - slack <= lo
        assert hi <= obs_delta * (round(obs_lo / obs_delta) + N) + slack
    elif fam == "unsigned":  # k / 100 of the maximum, k = 1 .. 101
        assert lo == 0.0 and 100 * hi / x.max() == pytest.approx(round(100 * hi / x.max()), abs=1e-6)
        assert 1 <= round(100 * hi / x.max()) <= 101
    else:  # a = qpos * (k / 100) * 2 max|x| / N, N = 2^bits - 1 (strict: - 2)
        N = 2**t.bits - (2 if scheme == "strict_symmetric" else 1)
        qpos = 2 ** (t.bits - 1) - 1
        k = hi / (qpos * 2 * a_max / N) * 100
        assert lo == -hi and k == pytest.approx(round(k), abs=1e-6) and 1 <= round(k) <= 101


def naive_aimet_asymmetric(lo: float, hi: float, bits: int) -> set:
    """AIMET's asymmetric TF-enhanced candidates, one loop at a time (the facts, restated)."""
    N = 2**bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    hi = max(hi, lo + MIN_RANGE)
    d_obs = (hi - lo) / N
    o_obs = float(np.round(lo / d_obs))
    obs_min, obs_max = d_obs * o_obs, d_obs * o_obs + d_obs * N
    out = {(obs_min, obs_max)}
    for k in range(1, 18):
        delta = d_obs * (k / 16.0)
        for i in range(21):
            offset = float(int(-N + N / 20.0 * i))  # C's double -> int conversion truncates
            tmin, tmax = delta * offset, delta * offset + delta * N
            if tmin < obs_min and tmax > obs_max:
                continue  # wider than the observed range on both sides: dropped
            tmin, tmax = max(obs_min, tmin), min(obs_max, tmax)
            if tmax - tmin < MIN_RANGE:
                continue
            d2 = (tmax - tmin) / N
            o2 = float(np.round(tmin / d2))
            out.add((d2 * o2, d2 * o2 + d2 * N))
    return out


@pytest.mark.parametrize("lo, hi, bits", [(-1.0, 3.0, 8), (0.0, 2.0, 8), (-5.0, 0.5, 4), (-0.3, 0.3, 16), (-2.0, 0.0, 8)])
def test_tf_enhanced_candidates_are_aimets(lo, hi, bits):
    cmin, cmax = ranges._tf_enhanced_candidates("asymmetric", np.array([lo]), np.array([hi]), qtype_for_bits(bits),
                                                "asymmetric")
    got = {(round(a, 12), round(b, 12)) for a, b in zip(cmin[0], cmax[0])}
    want = {(round(a, 12), round(b, 12)) for a, b in naive_aimet_asymmetric(lo, hi, bits)}
    assert got == want
    for scheme, n_steps in (("symmetric", 2**bits - 1), ("strict_symmetric", 2**bits - 2)):
        cmin, cmax = ranges._tf_enhanced_candidates("symmetric", np.array([lo]), np.array([hi]), qtype_for_bits(bits),
                                                    scheme)
        qpos = 2 ** (bits - 1) - 1
        a = [qpos * (k / 100) * 2 * max(abs(lo), abs(hi)) / n_steps for k in range(1, 102)]
        np.testing.assert_allclose(cmax[0], a, rtol=1e-12)
        np.testing.assert_array_equal(cmin[0], -cmax[0])
    cmin, cmax = ranges._tf_enhanced_candidates("unsigned", np.array([0.0]), np.array([hi]), qtype_for_bits(bits),
                                                "unsigned_symmetric")
    np.testing.assert_allclose(cmax[0], [hi * k / 100 for k in range(1, 102)], rtol=1e-12)
    assert not cmin.any()


def qtype_for_bits(bits: int):
    return qtype({4: "int4", 8: "int8", 16: "int16"}[bits])


def test_tf_enhanced_gamma_weighs_clipping():
    assert TF_ENHANCED_GAMMA == 3.0
    x = heavy_tailed(2, 20_000)
    obs = feed(make_observer("tf_enhanced", "int4", "symmetric"), [x])
    lo, hi = obs.compute()
    # clipping costs gamma times more: the gamma-weighted cost exceeds the plain MSE exactly when values clip
    assert obs.expected_error(lo, hi, gamma=TF_ENHANCED_GAMMA) > obs.expected_error(lo, hi)
    a = float(np.abs(x).max())
    assert obs.expected_error(-a, a, gamma=TF_ENHANCED_GAMMA) == pytest.approx(obs.expected_error(-a, a), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# per channel
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("enc_scheme", ["asymmetric", "symmetric"])
def test_per_channel_equals_per_tensor_per_channel(scheme, enc_scheme):
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((6, 4, 3, 3)) * rng.uniform(0.1, 3, (6, 1, 1, 1))).astype(np.float32)
    w[2] = 0.0  # an all-zero channel
    w[3, 0, 0, 0] = 9.0  # an outlier
    obs = feed(make_observer(scheme, "int8", enc_scheme, axis=0, bins=256), [w])
    lo, hi = obs.compute()
    assert lo.shape == hi.shape == (6,)
    for c in range(6):
        one = feed(make_observer(scheme, "int8", enc_scheme, bins=256), [w[c]])
        np.testing.assert_allclose([lo[c], hi[c]], [float(v) for v in one.compute()], rtol=1e-9, atol=0)
    enc = obs.encoding()
    assert enc.scale.shape == (6,) and enc.granularity.axis == 0
    if enc_scheme == "symmetric":
        np.testing.assert_array_equal(lo, -hi)


def test_per_channel_conv_weight():
    # a 512-channel 3x3x256 conv weight, the size the simulator meets (timing: see the report)
    w = torch.randn(512, 256, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    obs = make_observer("mse", "int8", "strict_symmetric", axis=0, name="conv.weight")
    obs.update(w)
    lo, hi = obs.compute()
    assert lo.shape == (512,) and np.all(lo == -hi)
    amax = w.abs().amax(dim=(1, 2, 3)).double().numpy()
    assert np.all(hi <= amax) and np.all(hi > 0.3 * amax)
    enc = obs.encoding()
    assert enc.scale.shape == (512,) and (enc.qmin, enc.qmax) == (-127, 127)


# ---------------------------------------------------------------------------------------------
# constant and zero tensors, unusual inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("enc_scheme", ENCODING_SCHEMES)
def test_zero_only_tensor(scheme, enc_scheme):
    obs = feed(make_observer(scheme, "int8", enc_scheme), [np.zeros(5, np.float32), np.zeros((2, 3), np.float32)])
    lo, hi = obs.compute()
    assert (float(lo), float(hi)) == (0.0, 0.0)
    enc = obs.encoding()  # the MIN_RANGE floor makes it a valid encoding with zero exact
    assert float(enc.scale) > 0 and fake_quantize(np.zeros(3, np.float32), enc, "half_to_even").tolist() == [0, 0, 0]
    pc = feed(make_observer(scheme, "int8", enc_scheme, axis=1), [np.float32([[0, 1.5], [0, -0.5]])])
    lo, hi = pc.compute()
    assert lo[0] == hi[0] == 0.0 and pc.encoding().scale.shape == (2,)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_constant_then_spread(scheme):
    # a constant first batch is a point mass; it joins the histogram once a spread arrives
    obs = feed(make_observer(scheme, "int8", "asymmetric", bins=16), [np.full(10, 2.0, np.float32),
                                                                       np.float32([-1.0, 0.5, 3.0])])
    assert obs.n_values == 13
    if scheme != "minmax":
        counts, edges = obs.histogram()
        x = np.concatenate([np.full(10, 2.0), [-1.0, 0.5, 3.0]])
        np.testing.assert_array_equal(counts, np.histogram(x, bins=edges)[0])
    lo, hi = obs.compute()
    slack = 4.0 / 255 / 2 if scheme == "tf_enhanced" else 0.0  # AIMET snaps the observed range to its grid
    assert -1.0 - slack <= lo <= 0.0 <= hi <= 3.0 + slack


def test_input_kinds():
    for x in (torch.tensor([1.0, -2.0], dtype=torch.float16), torch.tensor([1.0, -2.0], dtype=torch.bfloat16),
              torch.tensor([1, -2], dtype=torch.int32), np.float64([1.0, -2.0]),
              torch.tensor([1.0, -2.0], requires_grad=True)):
        obs = make_observer("percentile", "int8", "asymmetric", percentile=100.0)
        obs.update(x)
        assert [float(v) for v in obs.compute()] == [-2.0, 1.0]


def test_reset():
    obs = feed(make_observer("mse", "int8", "asymmetric"), [np.float32([1, 2, 3])])
    size = obs.state_nbytes
    obs.reset()
    assert obs.n_batches == 0 and obs.n_values == 0 and obs.state_nbytes == 0
    feed(obs, [np.float32([-5, 5])])
    assert obs.state_nbytes == size and [float(v) for v in obs.compute()][1] <= 5.0


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, count", [(np.nan, 2), (np.inf, 2), (-np.inf, 1)])
def test_nan_inf_refused(bad, count):
    obs = make_observer("mse", "int8", "asymmetric", name="conv1.output")
    obs.update(torch.ones(4))
    before = obs.compute()
    x = torch.zeros(10)
    x[:count] = bad
    with pytest.raises(DataError, match=rf"observer 'conv1.output': calibration batch 1 \(counting from 0\) has "
                                        rf"{count} NaN/Inf value\(s\) out of 10 \(shape \(10,\)\)"):
        obs.update(x)
    assert obs.n_batches == 1 and obs.n_values == 4 and obs.compute() == before  # state unchanged


@pytest.mark.parametrize("call, error, message", [
    (lambda: make_observer("kl", "int8", "symmetric"), HwsimError, "unknown range-setting scheme 'kl'"),
    (lambda: make_observer("mse", "int8", "sym", name="w"), EncodingError,
     "observer 'w': unknown encoding scheme 'sym'"),
    (lambda: make_observer("mse", "int64", "symmetric", name="w"), EncodingError, "observer 'w': .*4, 8, 16 or 32 bit"),
    (lambda: make_observer("mse", "int7", "symmetric"), EncodingError, "unknown integer dtype 'int7'"),
    (lambda: make_observer("percentile", "int8", "symmetric", percentile=40), HwsimError,
     r"percentile must be .*\[50, 100\]"),
    (lambda: make_observer("mse", "int8", "symmetric", bins=4), HwsimError, "bins must be an int >= 8, found 4"),
    (lambda: make_observer("mse", "int8", "symmetric", axis=1.0), HwsimError, "axis must be an int or None"),
    (lambda: make_observer("mse", "int8", "symmetric", name="a").compute(), DataError, "observer 'a' has seen no"),
    (lambda: make_observer("minmax", "int8", "symmetric", name="a").expected_error(0, 1), HwsimError,
     "scheme 'minmax' keeps only min and max"),
    (lambda: make_observer("mse", "int8", "symmetric", name="e").update(torch.zeros(0, 3)), DataError,
     r"observer 'e': calibration batch 0 \(counting from 0\) is empty \(shape \(0, 3\)\)"),
    (lambda: make_observer("mse", "int8", "symmetric", axis=2, name="w").update(torch.zeros(3, 3)), DataError,
     r"axis 2 is out of range for a tensor of shape \(3, 3\)"),
    (lambda: feed(make_observer("mse", "int8", "symmetric", axis=0, name="w"), [np.zeros((3, 2)), np.zeros((4, 2))]),
     DataError, r"batch 1 \(counting from 0\) has 4 channels along axis 0 .*earlier batches had 3"),
    (lambda: make_observer("mse", "int8", "symmetric").update(torch.tensor([True])), DataError, "dtype torch.bool"),
    (lambda: feed(make_observer("mse", "int8", "symmetric", axis=0, name="w"), [np.ones((3, 2))]).expected_error(
        np.zeros(2), 1.0), HwsimError,
     r"observer 'w': expected_error takes .* one per channel \(3\); found shapes \(2,\)"),
])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_docstrings_run():
    assert doctest.testmod(ranges, optionflags=doctest.ELLIPSIS).failed == 0
    assert ranges.__doc__ and "tf_enhanced" in ranges.__doc__


def test_encoding_uses_the_target_grid():
    obs = feed(make_observer("minmax", "int8", "unsigned_symmetric", axis=0), [np.float32([[0, 2], [1, 3]])])
    enc = obs.encoding()
    assert str(enc.dtype) == "uint8" and enc.zero_point.tolist() == [0, 0]  # every min >= 0: the unsigned grid
    assert enc == encoding_from_range(*obs.compute(), "int8", "unsigned_symmetric", enc.granularity)
    with pytest.raises(EncodingError, match="per-tensor encoding takes one min and max"):
        obs.encoding(PerTensor())
