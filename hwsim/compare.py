"""Float vs fast-sim vs exact-sim vs integer runtime, end to end and layer by layer.

:func:`compare` runs the four on the same data (in batches, accumulating statistics, so memory stays
bounded by one batch) and returns a plain dict whose keys name the figures::

    accuracy.{float,fast,exact,integer}          (when labels are given)
    fast_vs_integer.top1_agreement, exact_vs_integer.top1_agreement, float_vs_integer.top1_agreement
    exact_vs_integer.identical_fraction          (every quantized tensor of every layer, all elements)
    fast_vs_integer.within_1lsb_fraction         (Conv/Gemm outputs)
    layers[i] = {name, op_type, sqnr_fast_db, sqnr_integer_db, lsb_hist, overflow, saturation}

``sqnr_*_db`` is the SQNR of the layer's output against the float model's (dequantized), and
``lsb_hist`` counts ``fast - integer`` differences in output LSBs from -3 to +3 (beyond clipped
into the end bins). :func:`plot` draws the per-layer SQNR and the LSB histograms.
"""
from __future__ import annotations

import numpy as np
from .graph import RECURRENT

LSB_RANGE = 3


def _batches(x: np.ndarray, size: int):
    for i in range(0, len(x), size):
        yield i, x[i:i + size]


def compare(sim, x: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 256, progress: bool = True) -> dict:
    import torch

    import runtime
    from hwsim.export import build

    prog = runtime.load(build(sim), sim.target)
    out = sim.output_names[0]
    layers = [g for g in sim.groups if g.out_quantized]
    acc = {k: [] for k in ("float", "fast", "exact", "integer")}
    per = {g.name: {"sig": 0.0, "nf": 0.0, "ni": 0.0, "hist": np.zeros(2 * LSB_RANGE + 1, np.int64),
                    "overflow": 0, "saturation": 0} for g in layers}
    ident = [0, 0]
    it = _batches(x, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(list(it), desc="compare", unit="batch", leave=False)
    with torch.no_grad():
        for _, xb in it:
            t = torch.from_numpy(np.ascontiguousarray(xb, np.float32))
            fl = sim.run_float((t,), fake=False)
            fa = sim.run_float((t,), fake=True)
            ex = sim.run_exact((t,))
            res = prog.run_with_details({sim.input_names[0]: xb}, keep_tensors=True)
            for g in layers:
                q = sim.quantizer_of(g.output)
                if g.op_type in RECURRENT:
                    from .recurrent import runtime_tensor

                    integer = torch.from_numpy(runtime_tensor(g, res.tensors).astype(np.int64))
                else:
                    integer = torch.from_numpy(res.tensors[g.output + "_q"].astype(np.int64))
                e = ex[g.output]
                ident[0] += int((e == integer).sum())
                ident[1] += e.numel()
                ref = fl[g.output].double()
                p = per[g.name]
                p["sig"] += float((ref ** 2).sum())
                p["nf"] += float(((fa[g.output].double() - ref) ** 2).sum())
                p["ni"] += float(((q.dequantize(integer).double() - ref) ** 2).sum())
                d = torch.clamp(q.quantize(fa[g.output]) - integer, -LSB_RANGE, LSB_RANGE) + LSB_RANGE
                p["hist"] += np.bincount(d.reshape(-1).numpy(), minlength=2 * LSB_RANGE + 1)
                st = res.stats.get(g.name)
                if st is not None:
                    p["overflow"] += st.overflow
                    p["saturation"] += st.saturation
            acc["float"].append(fl[out].numpy())
            acc["fast"].append(fa[out].numpy())
            acc["exact"].append(sim.quantizer_of(out).dequantize(ex[out]).numpy())
            acc["integer"].append(res.outputs[out])
    logits = {k: np.concatenate(v) for k, v in acc.items()}
    top = {k: v.argmax(-1) for k, v in logits.items()}
    report: dict = {"target": sim.target.name, "samples": int(len(x))}
    if labels is not None:
        report["accuracy"] = {k: float(np.mean(v == labels)) for k, v in top.items()}
    for k in ("fast", "exact", "float"):
        report[f"{k}_vs_integer"] = {"top1_agreement": float(np.mean(top[k] == top["integer"]))}
    report["exact_vs_integer"]["identical_fraction"] = ident[0] / max(ident[1], 1)
    mac = [per[g.name]["hist"] for g in layers if g.op_type in ("Conv", "Gemm")]
    tot = np.sum(mac, axis=0) if mac else np.zeros(2 * LSB_RANGE + 1)
    report["fast_vs_integer"]["within_1lsb_fraction"] = float(tot[LSB_RANGE - 1:LSB_RANGE + 2].sum() / max(tot.sum(), 1))
    report["layers"] = []
    for g in layers:
        p = per[g.name]
        report["layers"].append({
            "name": g.name, "op_type": g.op_type + "".join("+" + a.op_type for a in g.acts),
            "sqnr_fast_db": _db(p["sig"], p["nf"]), "sqnr_integer_db": _db(p["sig"], p["ni"]),
            "lsb_hist": {str(i - LSB_RANGE): int(c) for i, c in enumerate(p["hist"])},
            "overflow": int(p["overflow"]), "saturation": int(p["saturation"]),
        })
    return report


def _db(sig: float, noise: float) -> float | None:
    if noise == 0:
        return None  # identical: infinite SQNR (JSON null)
    return round(10 * np.log10(max(sig, 1e-30) / noise), 2)


def plot(report: dict, path) -> None:
    """Two panels: per-layer SQNR against float (fast-sim and integer), and per layer the share of
    output elements whose fast-sim value differs from the integer runtime's by -3..+3 LSB."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.atomic import atomic_write_bytes

    layers = report["layers"]
    names = [f"{r['name']} ({r['op_type']})" for r in layers]
    y = np.arange(len(layers))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 0.35 * len(layers) + 2.5), sharey=True)
    cap = 80.0
    for off, key, label in ((-0.2, "sqnr_fast_db", "fast-sim"), (0.2, "sqnr_integer_db", "integer runtime")):
        vals = [cap if r[key] is None else r[key] for r in layers]
        a1.barh(y + off, vals, height=0.4, label=label)
    a1.set_yticks(y, names, fontsize=8)
    a1.invert_yaxis()
    a1.set_xlabel("SQNR vs float (dB; identical shown at 80)")
    a1.legend(loc="lower right")
    bins = [str(i) for i in range(-LSB_RANGE, LSB_RANGE + 1)]
    left = np.zeros(len(layers))
    colors = plt.cm.RdBu(np.linspace(0.1, 0.9, len(bins)))
    for b, c in zip(bins, colors):
        frac = np.array([r["lsb_hist"][b] / max(sum(r["lsb_hist"].values()), 1) for r in layers])
        a2.barh(y, frac, left=left, color=c, label=f"{b} LSB" if b != "0" else "0 (equal)")
        left += frac
    a2.set_xlabel("fast-sim minus integer, share of output elements")
    a2.legend(fontsize=7, ncol=4, loc="lower right")
    acc = report.get("accuracy")
    title = f"{report['target']}: exact==integer on {report['exact_vs_integer']['identical_fraction']:.2%} of elements"
    if acc:
        title += "; accuracy " + ", ".join(f"{k} {v:.2%}" for k, v in acc.items())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
