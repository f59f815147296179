"""Where quantization hurts a model: per-layer sensitivity, activation histograms against their
encodings, and per-layer output error against the float model.

All three run the simulation in fast mode and switch quantizers with their ``enabled`` flag (a
disabled quantizer passes its tensor through in float; see :class:`hwsim.sim.Quantizer`); the flags
and the mode are restored afterwards, also on error (:func:`quantizers_enabled`). A *layer* here is
what owns quantizers: each model input (its input quantizer) and each fused group with a quantized
output or a weight (weight, bias and output quantizers; :func:`quantized_layers`).

:func:`sensitivity` scores the model (top-1 accuracy with labels; otherwise the output SQNR against
the float model, ``10 log10(sum y_float^2 / sum (y - y_float)^2)`` dB, ``None`` when identical;
or a user's ``eval_fn(sim) -> float``) with:

- ``float``: no quantizer enabled (equals the float model), ``quantized``: all enabled;
- ``weights_only``: weight and bias quantizers only, ``activations_only``: activation quantizers only;
- per layer, ``only``: that layer's quantizers only, and ``all_but``: all but that layer's.

:func:`activation_histograms` streams data through the float model twice (the observed range, then
fixed-edge histograms: memory is one batch plus the histograms) and marks each tensor's encoding
range ``[s (qmin - z), s (qmax - z)]`` and the share of values it clips (more than half a step outside). :func:`layer_output_mse`
gives every quantized layer output's ``mean((fast - float)^2)`` and SQNR with all quantizers on.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from runtime.errors import DataError, HwsimError

from .report import figure_png, pyplot


def _key(name: str) -> str:
    return name.replace(".", "_")


# -----------------------------------------------------------------------------------------------
# quantizers and their flags
# -----------------------------------------------------------------------------------------------
def all_quantizers(sim) -> list:
    return list(sim.act_q.values()) + list(sim.weight_q.values()) + list(sim.bias_q.values())


def quantized_layers(sim) -> list[dict]:
    """``[{"name", "op_type", "quantizers": [Quantizer, ...]}]``: model inputs first, then groups."""
    out = [{"name": v, "op_type": "Input", "quantizers": [sim.quantizer_of(v)]} for v in sim.input_names]
    for g in sim.groups:
        k = _key(g.name)
        qs = [sim.weight_q[k], sim.bias_q[k]] if k in sim.weight_q else []
        if g.out_quantized:
            qs.append(sim.quantizer_of(g.output))
        if qs:
            op_type = g.op_type + "".join("+" + a.op_type for a in g.acts)
            out.append({"name": g.name, "op_type": op_type, "quantizers": qs})
    return out


@contextmanager
def quantizers_enabled(sim, enabled):
    """Within the block, exactly the quantizers in ``enabled`` are on (fast mode), the others pass
    their tensors through in float; every flag is restored on exit, also on error."""
    qs = all_quantizers(sim)
    before = [q.enabled for q in qs]
    on = {id(q) for q in enabled}
    try:
        for q in qs:
            q.enabled = id(q) in on
        yield sim
    finally:
        for q, e in zip(qs, before):
            q.enabled = e


@contextmanager
def _mode(sim, mode: str):
    before = sim.mode
    try:
        sim.mode = mode
        yield sim
    finally:
        sim.mode = before


def _check_calibrated(sim, what: str) -> None:
    missing = [q.tensor_name for q in all_quantizers(sim) if q.encoding is None]
    if missing:
        raise HwsimError(f"{what}: tensors {missing[:5]} have no encodings: call sim.calibrate(...) first")


def _device(sim):
    for p in sim.parameters():
        return p.device
    for b in sim.buffers():
        return b.device
    return torch.device("cpu")


def _batches(sim, x, batch_size: int, what: str):
    if batch_size < 1:
        raise HwsimError(f"{what}: batch_size must be >= 1, found {batch_size}")
    if len(x) == 0:
        raise DataError(f"{what}: the data set is empty")
    dev = _device(sim)
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[i:i + batch_size], np.float32)
                             if not isinstance(x, torch.Tensor) else x[i:i + batch_size])
        # a fresh copy with the default strides: for a size-1 dimension numpy and torch may carry any
        # stride, and oneDNN then picks another float convolution kernel (last-bit differences); the
        # numbers should not depend on how the caller's array was sliced
        yield torch.empty(xb.shape, dtype=torch.float32, device=dev).copy_(xb)


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _sumsq(a: np.ndarray) -> float:
    """``sum(a^2)`` with numpy's pairwise summation: the same bits whatever torch's thread count."""
    return float(np.square(a).sum())


def _db(sig: float, noise: float) -> float | None:
    if noise == 0:
        return None
    return float(10 * np.log10(max(sig, 1e-30) / noise))


def _progress(it, progress: bool, desc: str, unit: str):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit=unit, leave=False)


# -----------------------------------------------------------------------------------------------
# sensitivity
# -----------------------------------------------------------------------------------------------
def sensitivity(sim, x=None, labels=None, *, eval_fn=None, batch_size: int = 256, progress: bool = True) -> dict:
    """Scores with parts of the model quantized (see the module docstring), in fast mode.

    Give ``x`` (and ``labels`` for accuracy; without them the output SQNR against float is the
    score), or ``eval_fn(sim) -> float`` (higher is better; called with the simulation in fast mode
    and the flags of one configuration set). Returns ``{"metric", "samples", "float", "quantized",
    "weights_only", "activations_only", "layers": [{"name", "op_type", "tensors", "only", "all_but"}]}``.
    """
    _check_calibrated(sim, "sensitivity")
    if (eval_fn is None) == (x is None):
        raise HwsimError("sensitivity: give either data x (with optional labels) or eval_fn, not both or neither")
    out_name = sim.output_names[0]
    if eval_fn is not None:
        if labels is not None:
            raise HwsimError("sensitivity: labels go with x; eval_fn scores the model itself")
        metric, samples = getattr(eval_fn, "description", "score"), None

        def score():
            v = eval_fn(sim)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise HwsimError(f"sensitivity: eval_fn must return one number (higher is better), found {v!r}")
            return float(v)
    else:
        batches = list(_batches(sim, x, batch_size, "sensitivity"))
        samples = int(len(x))
        if labels is not None:
            y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
            if len(y) != samples:
                raise DataError(f"sensitivity: {samples} samples but {len(y)} labels")
            ys = list(torch.split(y.to(_device(sim)), batch_size))
            metric = "accuracy"

            def score():
                hit = sum(int((sim.run_float((b,), fake=True)[out_name].argmax(-1) == t).sum())
                          for b, t in zip(batches, ys))
                return hit / samples
        else:
            metric = "output_sqnr_db"
            with torch.no_grad():
                ref = [_f64(sim.run_float((b,), fake=False)[out_name]) for b in batches]

            def score():
                sig = noise = 0.0
                for b, r in zip(batches, ref):
                    d = _f64(sim.run_float((b,), fake=True)[out_name]) - r
                    sig, noise = sig + _sumsq(r), noise + _sumsq(d)
                return _db(sig, noise)

    qs = all_quantizers(sim)
    weights = list(sim.weight_q.values()) + list(sim.bias_q.values())
    layers = quantized_layers(sim)
    configs = [("float", []), ("quantized", qs), ("weights_only", weights), ("activations_only", list(sim.act_q.values()))]
    for i, layer in enumerate(layers):
        mine = {id(q) for q in layer["quantizers"]}
        configs.append((("only", i), layer["quantizers"]))
        configs.append((("all_but", i), [q for q in qs if id(q) not in mine]))
    res: dict = {"metric": metric, "samples": samples}
    rows = [{"name": lay["name"], "op_type": lay["op_type"], "tensors": [q.tensor_name for q in lay["quantizers"]]}
            for lay in layers]
    with _mode(sim, "fast"), torch.no_grad():
        for key, on in _progress(configs, progress, "sensitivity", "config"):
            with quantizers_enabled(sim, on):
                s = score()
            if isinstance(key, tuple):
                rows[key[1]][key[0]] = s
            else:
                res[key] = s
    res["layers"] = rows
    return res


# -----------------------------------------------------------------------------------------------
# activation histograms, per-layer output error
# -----------------------------------------------------------------------------------------------
def _producers(sim) -> dict[str, str]:
    """Quantized activation tensor -> the layer (input or group) that produces it."""
    out = {v: v for v in sim.input_names}
    for g in sim.groups:
        if g.out_quantized:
            out[g.output] = g.name
    return out


def encoding_range(enc) -> tuple[float, float]:
    """The real range ``[s (qmin - z), s (qmax - z)]`` of a per-tensor encoding."""
    s, z = float(np.asarray(enc.scale)), float(np.asarray(enc.zero_point))
    return s * (enc.qmin - z), s * (enc.qmax - z)


def activation_histograms(sim, x, bins: int = 64, batch_size: int = 256, progress: bool = True) -> dict:
    """``{tensor: {"layer", "count", "min", "max", "encoding_min", "encoding_max", "below", "above",
    "edges", "counts"}}`` for every quantized activation, from ``x`` through the float model:
    ``below``/``above`` are the shares of values the encoding clips (beyond its range by more than
    half a step, so that their error exceeds rounding's); the ``bins`` equal bins span the union of
    the observed and the encoding's range."""
    _check_calibrated(sim, "activation_histograms")
    if bins < 1:
        raise HwsimError(f"activation_histograms: bins must be >= 1, found {bins}")
    prod = _producers(sim)
    names = [q.tensor_name for q in sim.act_q.values()]
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    with torch.no_grad():
        for xb in _progress(list(_batches(sim, x, batch_size, "activation_histograms")), progress, "ranges", "batch"):
            vals = sim.run_float((xb,), fake=False)
            for n in names:
                lo[n] = min(lo[n], float(vals[n].min()))
                hi[n] = max(hi[n], float(vals[n].max()))
        res, half = {}, {}
        for n in names:
            enc = sim.act_q[_key(n)].encoding
            emin, emax = encoding_range(enc)
            half[n] = 0.5 * float(np.asarray(enc.scale))
            a, b = min(lo[n], emin), max(hi[n], emax)
            if not b > a:
                b = a + 1.0
            res[n] = {"layer": prod.get(n, n), "count": 0, "min": lo[n], "max": hi[n], "encoding_min": emin,
                      "encoding_max": emax, "below": 0, "above": 0,
                      "edges": np.linspace(a, b, bins + 1), "counts": np.zeros(bins, np.int64)}
        for xb in _progress(list(_batches(sim, x, batch_size, "activation_histograms")), progress, "histograms",
                            "batch"):
            vals = sim.run_float((xb,), fake=False)
            for n in names:
                v = _f64(vals[n]).reshape(-1)
                r = res[n]
                r["counts"] += np.histogram(v, bins=r["edges"])[0]
                r["count"] += v.size
                r["below"] += int((v < r["encoding_min"] - half[n]).sum())
                r["above"] += int((v > r["encoding_max"] + half[n]).sum())
    for r in res.values():
        r["below"] = r["below"] / max(r["count"], 1)
        r["above"] = r["above"] / max(r["count"], 1)
    return res


def layer_output_mse(sim, x, batch_size: int = 256, progress: bool = True) -> list[dict]:
    """Per quantized layer output (model inputs included): ``{"name", "op_type", "tensor", "mse",
    "sqnr_db"}`` of the fast simulation (all quantizers on) against the float model on ``x``."""
    _check_calibrated(sim, "layer_output_mse")
    layers = [(v, "Input", v) for v in sim.input_names]
    layers += [(g.name, g.op_type + "".join("+" + a.op_type for a in g.acts), g.output)
               for g in sim.groups if g.out_quantized]
    acc = {t: [0.0, 0.0, 0] for _, _, t in layers}  # signal, noise, elements
    with quantizers_enabled(sim, all_quantizers(sim)), torch.no_grad():
        for xb in _progress(list(_batches(sim, x, batch_size, "layer_output_mse")), progress, "output error",
                            "batch"):
            fl = sim.run_float((xb,), fake=False)
            fa = sim.run_float((xb,), fake=True)
            for _, _, t in layers:
                r = _f64(fl[t])
                a = acc[t]
                a[0] += _sumsq(r)
                a[1] += _sumsq(_f64(fa[t]) - r)
                a[2] += r.size
    return [{"name": n, "op_type": op, "tensor": t, "mse": acc[t][1] / max(acc[t][2], 1),
             "sqnr_db": _db(acc[t][0], acc[t][1])} for n, op, t in layers]


# -----------------------------------------------------------------------------------------------
# plots
# -----------------------------------------------------------------------------------------------
def _finite(vals, cap: float):
    return [cap if v is None else v for v in vals]


def plot_sensitivity(res: dict) -> bytes:
    """PNG: per layer, the score with only that layer quantized (circle) and with all but it
    quantized (square); the float and fully quantized scores as vertical lines. An identical output
    (SQNR None, infinite) is drawn at the right edge."""
    plt = pyplot()
    rows = res["layers"]
    everything = [res["float"], res["quantized"]] + [r[k] for r in rows for k in ("only", "all_but")]
    known = [v for v in everything if v is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    pad = max(0.05 * (hi - lo), 0.01 * max(abs(hi), 1.0))
    cap = hi + 2 * pad if None in everything else hi  # where "identical" is drawn
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 2))
    if res["float"] is not None or None in everything:
        ax.axvline(_finite([res["float"]], cap)[0], color="k", ls="--", lw=1, label="float")
    ax.axvline(_finite([res["quantized"]], cap)[0], color="tab:red", ls=":", lw=1.5, label="all quantized")
    ax.plot(_finite([r["only"] for r in rows], cap), y, "o", label="only this layer quantized")
    ax.plot(_finite([r["all_but"] for r in rows], cap), y, "s", mfc="none", label="all but this layer quantized")
    ax.set_yticks(y, [f"{r['name']} ({r['op_type']})" for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(lo - pad, cap + pad)
    ax.set_xlabel(res["metric"] + (" (identical drawn at the right edge)" if None in everything else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.tight_layout()
    return figure_png(fig)


def plot_histograms(hists: dict, per_page: int = 12) -> list[bytes]:
    """PNGs of up to ``per_page`` activation histograms each (log counts), the encoding's min and
    max marked as red lines."""
    plt = pyplot()
    names = list(hists)
    pages = []
    for start in range(0, len(names), per_page):
        chunk = names[start:start + per_page]
        cols = min(3, len(chunk))
        rows = (len(chunk) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
        for ax in axes.flat[len(chunk):]:
            ax.axis("off")
        for ax, n in zip(axes.flat, chunk):
            h = hists[n]
            e = np.asarray(h["edges"])
            ax.stairs(np.asarray(h["counts"]), e, fill=True, alpha=0.7)
            ax.set_yscale("log")
            for v in (h["encoding_min"], h["encoding_max"]):
                ax.axvline(v, color="tab:red", lw=1)
            ax.set_title(f"{n} ({h['layer']}): clipped {h['below'] + h['above']:.2%}", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        pages.append(figure_png(fig))
    return pages


def plot_output_mse(rows: list[dict]) -> bytes:
    """PNG: per layer output, the MSE of the fast simulation against float (log) and its SQNR."""
    plt = pyplot()
    y = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 2), sharey=True)
    a1.barh(y, [max(r["mse"], 1e-30) for r in rows], color="tab:orange")
    a1.set_xscale("log")
    a1.set_xlabel("MSE, fast simulation vs float")
    a1.set_yticks(y, [f"{r['name']} ({r['op_type']})" for r in rows], fontsize=8)
    a1.invert_yaxis()
    known = [r["sqnr_db"] for r in rows if r["sqnr_db"] is not None]
    cap = max(known) + 10.0 if known else 100.0
    a2.barh(y, _finite([r["sqnr_db"] for r in rows], cap), color="tab:green")
    a2.set_xlabel("SQNR vs float (dB; identical drawn at the right end)")
    fig.tight_layout()
    return figure_png(fig)
