"""Quantizer.enabled: fast mode with every quantizer disabled is the float model; one disabled
quantizer changes only what is downstream of it."""
import torch

from tests.hwsim.sim_models import small_calibrated_sim


def _all(sim):
    return [*sim.act_q.values(), *sim.weight_q.values(), *sim.bias_q.values()]


def test_all_disabled_is_float_and_reenabling_restores_fast():
    sim, x = small_calibrated_sim("dsp-int8")
    sim.mode = "fast"
    fast = sim(x)
    sim.mode = "float"
    flt = sim(x)
    assert not torch.equal(fast, flt)
    for q in _all(sim):
        q.enabled = False
    sim.mode = "fast"
    torch.testing.assert_close(sim(x), flt, rtol=0, atol=0)
    for q in _all(sim):
        q.enabled = True
    assert torch.equal(sim(x), fast)


def test_disabling_one_weight_quantizer_changes_only_downstream_values():
    sim, x = small_calibrated_sim("npu-int8-pc")
    full = sim.run_float((x,), fake=True)
    g = next(g for g in sim.groups if g.head.op_type == "Conv")
    sim.weight_q[g.name.replace(".", "_")].enabled = False
    part = sim.run_float((x,), fake=True)
    assert not torch.equal(full[g.output], part[g.output])
    first = sim.groups.index(g)
    for earlier in sim.groups[:first]:
        assert torch.equal(full[earlier.output], part[earlier.output])
