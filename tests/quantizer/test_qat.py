"""QAT with learned ranges (quantizer/qat.py, hwsim.sim.Quantizer.learn_range).

- A learned quantizer's forward value is the target's fake quantization bit for bit; its gradients
  are LSQ's (checked against the formula on a hand example, including the gradient scale).
- Learned scales stay positive (whatever the parameter holds) and change under training.
- After QAT + freeze: exact mode equals the integer runtime (export + runtime.load) bit for bit,
  fast mode is within 1 LSB of it; per-tensor (dsp-int8) and per-channel (npu-int8-pc) targets.
- Stale encodings are refused by exact mode and export until the ranges are synced or frozen.
- On the digits residual CNN at W4A8 (npu-w4a8), a short QAT beats nearest-rounding PTQ in fast,
  exact and integer accuracy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import hwsim
import runtime
from hwsim.export import build
from hwsim.sim import Quantizer, _key
from quantizer.qat import enable_range_learning, freeze_ranges, qat, range_parameters, sync_ranges
from runtime.encoding import Encoding, PerAxis, PerTensor, encoding_from_range
from runtime.errors import DataError, HwsimError

from ..hwsim.sim_models import ResDW, images, small_calibrated_sim



def _small_sim(target: str):
    sim, x = small_calibrated_sim(target, 96)
    with torch.no_grad():
        sim.mode = "float"
        y = sim(x).argmax(1)  # the float model's labels: QAT must learn to match them
        sim.mode = "fast"
    return sim, x, y


def _runtime_result(sim, x):
    prog = runtime.load(build(sim), sim.target)
    res = prog.run_with_details({sim.input_names[0]: x.numpy()}, keep_tensors=True)
    torch.set_num_threads(1)  # Numba's OpenMP layer resets the process's OpenMP thread count
    return res


def _check_exact_fast_runtime(sim, x):
    """exact == runtime bit for bit (every quantized tensor), fast within 1 LSB of the runtime."""
    res = _runtime_result(sim, x)
    vals = sim.run_exact((x,))
    n = 0
    for g in sim.groups:
        name = g.output + "_q"
        if g.out_quantized and name in res.tensors:
            assert np.array_equal(vals[g.output].numpy(), res.tensors[name].astype(np.int64)), g.name
            n += 1
    assert n >= 3
    out = sim.output_names[0]
    sim.mode = "exact"
    with torch.no_grad():
        assert np.array_equal(sim(x).numpy(), res.outputs[out])
        sim.mode = "fast"
        fast = sim(x)
    lsb = (sim.quantizer_of(out).quantize(fast).numpy() - res.tensors[out + "_q"].astype(np.int64))
    assert np.abs(lsb).max() <= 1


# ------------------------------------------------------------------------------------------------
# the learned quantizer alone
# ------------------------------------------------------------------------------------------------
def _quantizer(enc: Encoding, kind: str = "activation", scheme: str = "asymmetric",
               rounding: str = "half_to_even") -> Quantizer:
    q = Quantizer("t", kind, enc.dtype, scheme, enc.granularity, rounding)
    q.set_encoding(enc)
    return q


@given(lo=st.floats(-4, 0), width=st.floats(1e-3, 8), dtype=st.sampled_from(["uint8", "int8", "int16"]),
       seed=st.integers(0, 2**16), ties=st.booleans(),
       rounding=st.sampled_from(["half_to_even", "half_away_from_zero", "half_up"]))
def test_learned_forward_value_is_the_fixed_fake_quantization(lo, width, dtype, seed, ties, rounding):
    enc = encoding_from_range(lo, lo + width, dtype, "asymmetric")
    x = torch.randn(200, generator=torch.Generator().manual_seed(seed)) * width + lo + width / 2
    if ties:  # exact .5 ties of x / s, and values beyond both ends
        k = torch.arange(-300, 300, dtype=torch.float32) + 0.5
        x = torch.cat([x, k * float(enc.scale)])
    fixed = _quantizer(enc, rounding=rounding)
    learned = _quantizer(enc, rounding=rounding)
    learned.learn_range()
    assert learned.learning and range_encoding_equal(learned.range_encoding(), enc)
    exact = fixed.dequantize(fixed.quantize(x))
    assert torch.equal(learned(x), exact) and torch.equal(fixed(x), exact)
    assert torch.equal(learned.quantize(x), fixed.quantize(x))  # encoding in sync: allowed


def range_encoding_equal(a: Encoding, b: Encoding) -> bool:
    return a == b and (a.qmin, a.qmax) == (b.qmin, b.qmax)


def test_per_channel_weights_learn_one_scale_per_channel_with_lsq_gradient_scale():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    mx = w.abs().amax(dim=(1, 2, 3)).numpy()
    enc = encoding_from_range(-mx, mx, "int4", "symmetric", PerAxis(0))
    q = _quantizer(enc, "weight", "symmetric")
    q.learn_range()
    assert q.learned_scale.shape == (4,) and not hasattr(q, "learned_zero_point")  # symmetric: fixed zp
    wp = w.clone().requires_grad_(True)
    out = q(wp)
    out.sum().backward()
    # d/ds_c = g * sum over channel c of (round(v) - v) inside, bound - z outside; g = 1/sqrt(N * Qp)
    s = torch.tensor(enc.scale).reshape(-1, 1, 1, 1)
    v = w / s
    r = torch.round(v)
    inside = (v >= enc.qmin) & (v <= enc.qmax)
    per = torch.where(inside, r - v, torch.where(v < enc.qmin, float(enc.qmin), float(enc.qmax)))
    g = 1 / math.sqrt(27 * 8)  # N = 27 elements per channel, Qp = max(7 - 0, 0 + 8) = 8
    # the parameter is s / s0: dL/dp = s0 * dL/ds
    assert torch.allclose(q.learned_scale.grad, s.reshape(-1) * g * per.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-8)
    assert torch.equal(wp.grad, inside.float())


def test_lsq_gradients_on_a_hand_example():
    # uint8, s = 0.5, z = 10: v = x / s; the last two values clamp at qmin = 0 and qmax = 255
    q = _quantizer(Encoding(0.5, 10, "uint8"))
    q.learn_range()
    x = torch.tensor([[0.3, 1.26, -6.0, 200.0]], requires_grad=True)  # one sample of N = 4 elements
    y = q(x)
    assert y.detach().tolist() == [[0.5, 1.5, -5.0, 122.5]]
    y.sum().backward()
    g = 1 / math.sqrt(4 * 245)  # Qp = max(255 - 10, 10 - 0)
    expect_s = g * ((1 - 0.6) + (3 - 2.52) + (0 - 10) + (255 - 10))
    assert x.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    assert math.isclose(float(q.learned_scale.grad), 0.5 * expect_s, rel_tol=1e-5)  # p = s / s0
    # zero point, learned as p = z / (qmax - qmin): dL/dz = -g * s for each clamped value, 0 inside
    expect_z = g * (-0.5 - 0.5)
    assert math.isclose(float(q.learned_zero_point.grad), expect_z * 255, rel_tol=1e-5)


def test_learned_scale_stays_positive_and_freezes_to_a_valid_encoding():
    enc = Encoding(0.25, 3, "int8")
    q = _quantizer(enc)
    q.learn_range()
    with torch.no_grad():
        q.learned_scale.fill_(-3.0)  # the magnitude sets the scale
    assert float(q._live()[0].detach()) == 0.75
    with torch.no_grad():
        q.learned_scale.fill_(0.0)    # the floor: s0 / 1024, exact
    assert float(q._live()[0].detach()) == 0.25 / 1024
    # an optimizer that drives the scale down (every value clamped: dL/ds = g * (bound - z) > 0)
    with torch.no_grad():
        q.learned_scale.fill_(1.0)
    opt = torch.optim.SGD(q.parameters(), lr=50.0)
    x = torch.full((8, 4), 1e4)
    for _ in range(50):
        opt.zero_grad()
        q(x).sum().backward()
        opt.step()
        assert float(q._live()[0].detach()) > 0
    q.freeze_range()
    assert not q.learning and q.encoding.scale > 0 and q.encoding.qmin == -128
    assert q.encoding.scale >= np.float32(0.25 / 1024)
    assert torch.isfinite(q(x)).all()


def test_zero_point_is_rounded_clamped_and_frozen_as_an_integer():
    q = _quantizer(Encoding(0.5, 10, "uint8"))
    q.learn_range()
    with torch.no_grad():
        q.learned_zero_point.fill_(12.6 / 255)   # z = 12.6 -> 13
    assert int(q.range_encoding().zero_point) == 13
    with torch.no_grad():
        q.learned_zero_point.fill_(-80 / 255)    # z = -80 -> clamped to qmin 0
    assert int(q.range_encoding().zero_point) == 0
    with torch.no_grad():
        q.learned_zero_point.fill_(11.5 / 255)   # z = 11.5, a tie: half to even -> 12
    x = torch.linspace(-10, 10, 101)
    y = q(x)
    q.freeze_range()
    assert q.encoding.zero_point.dtype == np.int64 and int(q.encoding.zero_point) == 12
    assert torch.equal(q(x), y)  # the frozen quantizer computes what the learned one did


def test_bias_scales_are_not_learned_directly():
    q = _quantizer(Encoding(1e-4, 0, "int32"), kind="bias", scheme="symmetric")
    with pytest.raises(HwsimError, match="s_x \\* s_w"):
        q.learn_range()
    uncal = Quantizer("t", "activation", "uint8", "asymmetric", PerTensor(), "half_to_even")
    with pytest.raises(HwsimError, match="calibrate"):
        uncal.learn_range()


# ------------------------------------------------------------------------------------------------
# on a simulation model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["dsp-int8", "npu-int8-pc"])
def test_gradients_reach_scales_zero_points_and_weights(target):
    sim, x, y = _small_sim(target)
    names = enable_range_learning(sim)
    assert len(names) == len(sim.act_q) + len(sim.weight_q)
    assert {id(p) for p in range_parameters(sim)} <= {id(p) for p in sim.parameters()}
    F.cross_entropy(sim(x), y).backward()
    for q in list(sim.weight_q.values()) + list(sim.act_q.values()):
        grad = q.learned_scale.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, q.tensor_name
    asym = [q for q in sim.act_q.values() if q.scheme == "asymmetric"]
    assert all(q.learned_zero_point.grad is not None for q in asym)
    for k, m in sim.layers.items():
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, k


@pytest.mark.parametrize("target", ["dsp-int8", "npu-int8-pc"])
def test_qat_then_freeze_exact_equals_integer_runtime(target):
    sim, x, y = _small_sim(target)
    before = {k: v for k, v in sim.encodings().items()}
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    res = qat(sim, batches, epochs=3, lr=3e-3, progress=False)
    assert len(res["losses"]) == 3 and res["steps"] == 9 and res["seconds"] > 0
    assert not any(q.learning for q in list(sim.act_q.values()) + list(sim.weight_q.values()))
    after = sim.encodings()
    acts = [q.tensor_name for q in sim.act_q.values()]
    weights = [q.tensor_name for q in sim.weight_q.values()]
    assert sum(not np.array_equal(before[n].scale, after[n].scale) for n in acts) >= len(acts) // 2
    assert sum(not np.array_equal(before[n].scale, after[n].scale) for n in weights) >= len(weights) // 2
    assert all(np.all(after[n].scale > 0) for n in acts + weights)
    # biases follow the learned scales: s_b = s_x * s_w
    for g in sim.groups:
        k = _key(g.name)
        if k in sim.bias_q:
            sx = sim.quantizer_of(g.head.inputs[0]).encoding.scale
            sb = np.float32(np.float64(sx) * sim.weight_q[k].encoding.scale.astype(np.float64))
            assert np.array_equal(np.broadcast_to(sim.bias_q[k].encoding.scale, sb.shape), sb), g.name
    _check_exact_fast_runtime(sim, images(40, 9))


def test_a_users_own_training_loop_with_sync_and_freeze():
    sim, x, y = _small_sim("npu-int8-pc")
    assert enable_range_learning(sim, activations=False) == [q.tensor_name for q in sim.weight_q.values()]
    assert not any(q.learning for q in sim.act_q.values())
    enable_range_learning(sim)  # idempotent for the weights, adds the activations
    opt = torch.optim.Adam(sim.parameters(), lr=3e-3)
    sim.mode = "fast"
    for i in range(0, len(x), 32):
        opt.zero_grad()
        F.cross_entropy(sim(x[i:i + 32]), y[i:i + 32]).backward()
        opt.step()
    # the encodings are now stale: exact mode and export refuse them
    sim.mode = "exact"
    with pytest.raises(HwsimError, match="freeze_ranges"):
        sim(x[:2])
    with pytest.raises(HwsimError, match="freeze_ranges"):
        build(sim)
    sync_ranges(sim)   # learning goes on, but exact mode now sees the learned values
    assert all(q.learning for q in list(sim.act_q.values()) + list(sim.weight_q.values()))
    with torch.no_grad():
        synced = sim(x[:8])
    freeze_ranges(sim)
    with torch.no_grad():
        assert torch.equal(sim(x[:8]), synced)
    _check_exact_fast_runtime(sim, x[:40])


def test_fixed_range_qat_keeps_the_calibrated_encodings():
    sim, x, y = _small_sim("dsp-int8")
    before = sim.encodings()
    w0 = {k: m.weight.detach().clone() for k, m in sim.layers.items()}
    qat(sim, [(x, y)], epochs=2, lr=1e-3, learn_ranges=False, progress=False)
    after = sim.encodings()
    assert all(before[n] == after[n] for n in before)
    assert any(not torch.equal(w0[k], m.weight) for k, m in sim.layers.items())
    _check_exact_fast_runtime(sim, x[:40])


def test_qat_refuses_bad_inputs():
    torch.manual_seed(0)
    model = ResDW(c=4, classes=3)
    x = images(8, 0)
    sim = hwsim.simulate(model, "dsp-int8", x[:1])
    with pytest.raises(HwsimError, match="calibrate"):
        qat(sim, [(x, torch.zeros(8, dtype=torch.int64))], progress=False)
    sim.calibrate([x], progress=False)
    one_shot = iter([(x, torch.zeros(8, dtype=torch.int64))])
    with pytest.raises(DataError, match="one-shot"):
        qat(sim, one_shot, epochs=2, progress=False)
    with pytest.raises(DataError, match="empty"):
        qat(sim, [], progress=False)
    with pytest.raises(DataError, match="pair"):
        qat(sim, [x], progress=False)


# ------------------------------------------------------------------------------------------------
# digits at W4A8
# ------------------------------------------------------------------------------------------------
def test_digits_residual_w4a8_qat_beats_nearest_rounding(capsys):
    from hwsim.digits import load_digits_split, pretrained

    x, y, xt, yt = load_digits_split()
    model = pretrained("residual", x, y)
    X, Y, XT = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt)
    sim = hwsim.simulate(model, "npu-w4a8", X[:1])
    sim.calibrate([X[i:i + 64] for i in range(0, 256, 64)], progress=False)

    def accuracies(sim):
        with torch.no_grad():
            sim.mode = "fast"
            fast = float((sim(XT).argmax(1).numpy() == yt).mean())
            sim.mode = "exact"
            exact = float((sim(XT).argmax(1).numpy() == yt).mean())
            sim.mode = "fast"
        res = _runtime_result(sim, XT)
        out = sim.output_names[0]
        integer = float((res.outputs[out].argmax(1) == yt).mean())
        assert np.array_equal(sim.run_exact((XT,))[out].numpy(), res.tensors[out + "_q"].astype(np.int64))
        return {"fast": fast, "exact": exact, "integer": integer}

    nearest = accuracies(sim)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    batches = [(X[perm[i:i + 32]], Y[perm[i:i + 32]]) for i in range(0, len(X), 32)]
    res = qat(sim, batches, epochs=3, lr=3e-4, progress=False)
    trained = accuracies(sim)
    with capsys.disabled():
        print(f"\ndigits residual npu-w4a8: nearest {nearest}, QAT {trained} "
              f"({res['steps']} steps, {res['seconds']:.1f} s)")
    assert res["losses"][-1] < res["losses"][0]
    for k in ("fast", "exact", "integer"):
        assert trained[k] > nearest[k], (k, nearest, trained)


def test_a_new_encoding_while_learning_restarts_learning_from_it():
    q = _quantizer(Encoding(0.5, 10, "uint8"))
    q.learn_range()
    with torch.no_grad():
        q.learned_scale.fill_(2.0)
        q.learned_zero_point.fill_(40 / 255)
    assert float(q.range_encoding().scale) == 1.0 and int(q.range_encoding().zero_point) == 40
    with pytest.raises(HwsimError, match="older than the learned values"):
        q.quantize(torch.zeros(3))
    q.sync_encoding()   # the learned values become the encoding; learning goes on from them
    assert q.learning and float(q.encoding.scale) == 1.0 and float(q.learned_scale.detach()) == 2.0
    q.set_encoding(Encoding(0.25, 7, "uint8"))   # e.g. a re-calibration
    assert q.learning and float(q.learned_scale.detach()) == 1.0
    assert q.range_encoding() == Encoding(0.25, 7, "uint8")
    assert torch.equal(q.quantize(torch.tensor([1.0])), torch.tensor([11]))
