"""Greedy per-layer selection, the cost model, compress(), fine-tuning, and the hwsim round trip.

- The selection meets its cost target (MACs and parameters), measured on the compressed model.
- The layer x option table is cached: a second call evaluates nothing; changed weights re-evaluate.
- Manual choices and exclusions (by name pattern and by type) are honoured.
- The greedy threshold is the highest one whose estimated cost meets the target (random tables).
- The machinery is generic: arbitrary options (bit widths) with their own cost function.
- MACs/params follow the formulas; the roofline latency is the max of its two terms.
- A compressed model (spatial SVD, weight SVD, channel pruning) goes through hwsim.simulate,
  calibration, exact mode and the integer runtime.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizer.compress import (Table, build_table, compress, finetune, greedy_select, layer_costs, model_cost,
                                select_ratios, total_cost)
from quantizer.compress.greedy import choose_at, estimated_cost, option_key
from runtime.errors import HwsimError
from tests.hwsim.sim_models import images, randomize_bn



class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.pw(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _tiny(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(Tiny(), seed=seed)


SAMPLES = [images(16, 11), images(16, 12)]
X_EVAL = images(32, 13)
CANDIDATES = (0.25, 0.5, 0.75)
ALL = ("spatial_svd", "weight_svd", "channel_pruning")


class Scorer:
    """-MSE of the output against the original model's (higher is better), counting calls."""

    def __init__(self, model):
        with torch.no_grad():
            self.ref = model(X_EVAL)
        self.calls = 0

    def __call__(self, m):
        self.calls += 1
        with torch.no_grad():
            return -float(((m(X_EVAL) - self.ref) ** 2).mean())


@pytest.mark.parametrize("cost,target", [("macs", 0.5), ("params", 0.6), ("macs", 0.8)])
def test_selection_meets_its_cost_target(cost, target):
    model = _tiny()
    sel = select_ratios(model, Scorer(model), CANDIDATES, target_cost=target, cost=cost, schemes=ALL,
                        samples=SAMPLES, progress=False)
    base = model_cost(model, X_EVAL[:1], cost)
    small = compress(model, sel, samples=SAMPLES)
    after = model_cost(small, X_EVAL[:1], cost)
    assert sel.cost_before == base and sel.cost_after == pytest.approx(after)
    assert after <= target * base
    assert sel.choices and all(o[1] in CANDIDATES for o in sel.choices.values())
    # the threshold rule: every chosen option scores at least the threshold
    assert all(sel.table.score(k, list(v)) >= sel.threshold for k, v in sel.choices.items())
    assert sel.predicted_score <= sel.table.baseline_score
    json.dumps(sel.to_json())  # the report is plain JSON


def test_table_is_cached_and_reruns_evaluate_nothing(tmp_path):
    model = _tiny()
    cache = tmp_path / "table.json"
    first = Scorer(model)
    sel1 = select_ratios(model, first, CANDIDATES, target_cost=0.6, schemes=ALL, samples=SAMPLES,
                         cache_path=cache, progress=False)
    n_options = sum(len(v) for v in sel1.table.options.values())
    assert first.calls == n_options + 1 and cache.is_file()
    again = Scorer(model)
    sel2 = select_ratios(model, again, CANDIDATES, target_cost=0.6, schemes=ALL, samples=SAMPLES,
                         cache_path=cache, progress=False)
    assert again.calls == 0 and sel2.choices == sel1.choices and sel2.table.scores == sel1.table.scores
    more = Scorer(model)  # one more candidate: only its entries are evaluated
    select_ratios(model, more, CANDIDATES + (0.4,), target_cost=0.6, schemes=ALL, samples=SAMPLES,
                  cache_path=cache, progress=False)
    assert 0 < more.calls < n_options
    other = Scorer(model)  # another evaluation named by the caller's key: a fresh table
    select_ratios(model, other, CANDIDATES, target_cost=0.6, schemes=ALL, samples=SAMPLES, cache_path=cache,
                  progress=False, cache_key="other data")
    assert other.calls == n_options + 1
    with torch.no_grad():
        model.fc.weight[0, 0] += 1.0  # other weights: the cache no longer applies
    changed = Scorer(model)
    select_ratios(model, changed, CANDIDATES, target_cost=0.6, schemes=ALL, samples=SAMPLES, cache_path=cache,
                  progress=False)
    assert changed.calls == n_options + 1
    assert json.loads(cache.read_text())["format"] == "hwsim-choice-table"


def test_manual_choices_are_honoured_and_not_evaluated():
    model = _tiny()
    sel = select_ratios(model, Scorer(model), CANDIDATES, target_cost=0.7, schemes=("spatial_svd", "weight_svd"),
                        example_input=X_EVAL[:1], progress=False,
                        manual={"pw": ("weight_svd", 0.25), "conv1": 0.75})
    assert sel.choices["pw"] == ("weight_svd", 0.25) and sel.choices["conv1"] == ("spatial_svd", 0.75)
    assert "pw" not in sel.table.options and "conv1" not in sel.table.options
    small = compress(model, sel)
    assert isinstance(small.pw, nn.Sequential) and small.pw[0].out_channels == 1  # floor(0.25 * 64 / 16)
    assert model_cost(small, X_EVAL[:1]) <= 0.7 * model_cost(model, X_EVAL[:1])
    with pytest.raises(HwsimError, match="name the scheme"):
        select_ratios(model, Scorer(model), CANDIDATES, schemes=ALL, samples=SAMPLES, progress=False,
                      manual={"conv2": 0.5})


@pytest.mark.parametrize("exclude,gone", [(["fc"], {"fc"}), (["conv*"], {"conv1", "conv2"}), ([nn.Linear], {"fc"})])
def test_exclusions_are_honoured(exclude, gone):
    model = _tiny()
    sel = select_ratios(model, Scorer(model), CANDIDATES, target_cost=0.7, schemes=ALL, samples=SAMPLES,
                        exclude=exclude, progress=False)
    assert not gone & set(sel.table.options) and not gone & set(sel.choices)
    assert all(sel.skipped[g] == "excluded" for g in gone)


def test_unreachable_target_is_refused():
    model = _tiny()
    with pytest.raises(HwsimError, match="cannot be reached"):
        select_ratios(model, Scorer(model), (0.75,), target_cost=0.05, example_input=X_EVAL[:1], progress=False)


@st.composite
def tables(draw):
    n_layers = draw(st.integers(1, 4))
    options, scores, costs = {}, {}, {}
    for i in range(n_layers):
        opts = draw(st.lists(st.integers(1, 9), min_size=1, max_size=4, unique=True))
        options[f"l{i}"] = opts
        scores[f"l{i}"] = {option_key(o): draw(st.floats(0, 1)) for o in opts}
        costs[f"l{i}"] = {option_key(o): 100.0 - draw(st.floats(0, 30)) for o in opts}
    return Table(1.0, 100.0, options, scores, costs)


@settings(max_examples=80, deadline=None)
@given(tables(), st.floats(0.3, 1.0))
def test_greedy_threshold_is_the_highest_that_meets_the_target(table, target):
    thresholds = sorted({s for per in table.scores.values() for s in per.values()}) + [math.inf]
    feasible = [t for t in thresholds if estimated_cost(table, choose_at(table, t)) <= target * 100.0 * (1 + 1e-12)]
    if not feasible:
        with pytest.raises(HwsimError, match="cannot be reached"):
            greedy_select(table, target)
        return
    choice, t, cost = greedy_select(table, target)
    assert t == max(feasible) and cost <= target * 100.0 * (1 + 1e-12)
    for layer, opt in choice.items():  # the cheapest option over the threshold
        ok = [o for o in table.options[layer] if table.score(layer, o) >= t]
        assert table.cost(layer, opt) == min(table.cost(layer, o) for o in ok)


def test_generic_options_pick_bit_widths_for_a_size_goal():
    """Mixed precision through the same machinery: options are bit widths, the cost is weight bits."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(x)
    layers = {"0": [2, 4, 6], "2": [2, 4, 6], "4": [2, 4, 6]}

    def apply(m, layer, bits):
        import copy

        m = copy.deepcopy(m)
        lin = m.get_submodule(layer)
        s = lin.weight.detach().abs().max() / (2 ** (bits - 1) - 1)
        with torch.no_grad():
            lin.weight.copy_(torch.round(lin.weight / s) * s)
        m.bits = {**getattr(m, "bits", {}), layer: bits}
        return m

    def size(m):
        bits = getattr(m, "bits", {})
        return float(sum(m.get_submodule(k).weight.numel() * bits.get(k, 8) for k in layers))

    def score(m):
        with torch.no_grad():
            return -float(((m(x) - ref) ** 2).mean())

    table = build_table(model, layers, apply, score, size, progress=False)
    assert table.baseline_cost == size(model) and table.score("2", 2) < table.score("2", 6)
    choice, _, cost = greedy_select(table, 0.6)
    assert cost <= 0.6 * table.baseline_cost and set(choice) <= set(layers)
    assert all(b in layers[k] for k, b in choice.items())
    m = model
    for k, b in choice.items():
        m = apply(m, k, b)
    assert size(m) == cost  # bit savings add up exactly


def test_compress_accepts_ratios_and_refuses_bad_input():
    model = _tiny()
    small = compress(model, {"conv2": 0.5, "conv1": 1.0}, scheme="spatial_svd")
    assert isinstance(small.conv2, nn.Sequential) and isinstance(small.conv1, nn.Conv2d)
    assert isinstance(model.conv2, nn.Conv2d)  # the input model is not changed
    pruned = compress(model, {"conv2": ("channel_pruning", 0.5)}, samples=SAMPLES)
    assert pruned.conv1.out_channels == pruned.conv2.in_channels == 4
    with pytest.raises(HwsimError, match="no module named 'nope'"):
        compress(model, {"nope": 0.5}, scheme="spatial_svd")
    with pytest.raises(HwsimError, match="without a scheme"):
        compress(model, {"conv2": 0.5})
    with pytest.raises(HwsimError, match="kept fraction"):
        compress(model, {"conv2": 1.5}, scheme="spatial_svd")
    with pytest.raises(HwsimError, match="needs samples"):
        compress(model, {"conv2": ("channel_pruning", 0.5)})


def test_layer_costs_follow_the_formulas():
    net = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False),
                        nn.Flatten(), nn.Linear(6 * 4 * 4, 7))
    costs = layer_costs(net, torch.zeros(3, 4, 8, 8))
    assert costs["0"].macs == 6 * 4 * 4 * 4 * 9 and costs["0"].params == 6 * 4 * 9 + 6
    assert costs["1"].macs == 6 * 4 * 4 * 2 * 9 and costs["1"].params == 6 * 2 * 9
    assert costs["3"].macs == 7 * 96 and costs["3"].params == 96 * 7 + 7
    assert costs["0"].act_bytes == 4 * 64 + 6 * 16  # 8-bit activations in and out, per sample
    tot = total_cost(costs)
    assert tot.macs == sum(c.macs for c in costs.values()) and tot.latency_s is None
    fast = layer_costs(net, torch.zeros(1, 4, 8, 8), macs_per_cycle=8, clock_hz=1e6, bandwidth_bytes_per_s=1e5)
    for c in fast.values():
        assert c.latency_s == max(c.macs / 8e6, c.bytes / 1e5)
    assert model_cost(net, torch.zeros(1, 4, 8, 8), "latency", macs_per_cycle=8, clock_hz=1e6) == \
        pytest.approx(sum(c.macs for c in costs.values()) / 8e6)
    with pytest.raises(HwsimError, match="macs_per_cycle and clock_hz"):
        model_cost(net, torch.zeros(1, 4, 8, 8), "latency")
    with pytest.raises(HwsimError, match="both macs_per_cycle"):
        layer_costs(net, torch.zeros(1, 4, 8, 8), macs_per_cycle=8)


def test_finetune_lowers_the_loss_and_checks_its_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    hist: list[float] = []
    out = finetune(model, lambda: iter(batches), epochs=8, lr=1e-2, progress=False, history=hist)
    assert out is model and not model.training and len(hist) == 8 and hist[-1] < hist[0]
    with pytest.raises(HwsimError, match="one-shot iterator"):
        finetune(model, iter(batches), epochs=2, progress=False)
    with pytest.raises(HwsimError, match=r"\(x, y\) batches"):
        finetune(model, [x], progress=False)


def test_compressed_model_runs_through_hwsim_and_the_integer_runtime():
    import hwsim
    import runtime
    from hwsim.export import build

    model = _tiny()
    small = compress(model, {"conv1": ("spatial_svd", 0.75), "conv2": ("channel_pruning", 0.5),
                             "pw": ("weight_svd", 0.5), "fc": ("channel_pruning", 0.75)}, samples=SAMPLES)
    assert isinstance(small.conv1, nn.Sequential) and small.conv2.in_channels == 4 and small.fc.in_features == 6
    sim = hwsim.simulate(small, "npu-int8-pc", X_EVAL[:1])
    sim.calibrate([X_EVAL[:16], X_EVAL[16:]], progress=False)
    with torch.no_grad():
        ref = small(X_EVAL)
        sim.mode = "float"
        torch.testing.assert_close(sim(X_EVAL), ref, rtol=1e-4, atol=1e-4)  # BN folding keeps the function
        sim.mode = "fast"
        fast = sim(X_EVAL)
    assert float((fast - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.05
    exact = sim.run_exact((X_EVAL,))[sim.output_names[0]]
    got = runtime.load(build(sim), sim.target).run({sim.input_names[0]: X_EVAL.numpy()})[sim.output_names[0]]
    want = sim.quantizer_of(sim.output_names[0]).dequantize(exact).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
