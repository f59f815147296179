"""Mixed-precision weights: the chosen widths meet the size goal, the mixed model runs identically in
exact mode and on the integer runtime, and a rerun reuses the cached score table."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from hwsim.export import build
from quantizer.mixed_precision import select_weight_bits, weight_layers, weight_size_bits, with_weight_bits
from quantizer.ptq import sqnr_score
from runtime.errors import HwsimError
from tests.hwsim.sim_models import small_calibrated_sim


def test_size_goal_met_and_mixed_model_is_bit_exact(tmp_path):
    sim, x = small_calibrated_sim("npu-w4a8")
    calls = []
    base_score = sqnr_score(x[:32])

    def score(s):
        calls.append(1)
        return base_score(s)
    res = select_weight_bits(sim, score, size_target=0.75, cache_path=tmp_path / "t.json", progress=False)
    assert res["size_fraction"] <= 0.75 and set(res["bits"].values()) <= {4, 8}
    assert 4 in res["bits"].values() and 8 in res["bits"].values()  # mixed, not all narrowed
    chosen = res["sim"]
    sizes = {n: chosen.layers[n.replace(".", "_")].weight.numel() for n in weight_layers(chosen)}
    assert weight_size_bits(chosen) == sum(sizes[n] * b for n, b in res["bits"].items())
    vals = chosen.run_exact((x[:8],))
    out = chosen.output_names[0]
    r = runtime.load(build(chosen), chosen.target).run_with_details({chosen.input_names[0]: x[:8].numpy()},
                                                                    keep_tensors=True)
    np.testing.assert_array_equal(vals[out].numpy(), r.tensors[out + "_q"].astype(np.int64))
    n = len(calls)
    again = select_weight_bits(sim, score, size_target=0.75, cache_path=tmp_path / "t.json", progress=False)
    assert len(calls) == n and again["bits"] == res["bits"]  # everything came from the cache


def test_narrowing_every_layer_and_errors():
    sim, x = small_calibrated_sim("npu-w4a8")
    names = weight_layers(sim)
    all8 = with_weight_bits(sim, {n: 8 for n in names})
    all4 = with_weight_bits(sim, {n: 4 for n in names})
    assert weight_size_bits(all4) * 2 == weight_size_bits(all8)
    assert all(all4.weight_q[n.replace(".", "_")].encoding.qmax == 7 for n in names)
    with pytest.raises(HwsimError, match="not a layer"):
        with_weight_bits(sim, {"nope": 4})
    with pytest.raises(HwsimError, match="narrower"):
        select_weight_bits(sim, lambda s: 0.0, bits=(8,), progress=False)
