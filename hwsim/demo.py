"""The embedded default job of ``make demo``.

On scikit-learn's bundled digits data (no download), for every built-in target: fit a small linear
classifier, quantize its input activations and weights with the target's own schemes (dtype,
symmetry, granularity, rounding), and report the quantize/dequantize round trip: SQNR, worst error
in quantization steps (at most 0.5 inside the range), saturated values, and the classifier's
accuracy with float vs fake-quantized operands.
"""
from __future__ import annotations

import json
import time

import numpy as np

from runtime.encoding import PerAxis, PerTensor, encoding_from_range
from runtime.quantize import dequantize, quantize
from runtime.target import builtin_names, load_alias, load_target


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32) / 16.0  # pixels in [0, 1]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    return x[idx], y[idx]


def _fit_linear(x, y, l2=1e-1):
    """Ridge regression on one-hot targets (closed form, deterministic): W [10, 64], b [10]."""
    xa = np.hstack([x, np.ones((len(x), 1), np.float32)]).astype(np.float64)
    t = np.eye(10)[y]
    w = np.linalg.solve(xa.T @ xa + l2 * np.eye(xa.shape[1]), xa.T @ t)
    return w[:-1].T.astype(np.float32), w[-1].astype(np.float32)


def _sqnr_db(ref, test):
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def _round_trip(t, x_train, x_test, w):
    a, wq = t.arithmetic.activations, t.arithmetic.weights_for("Gemm")
    rnd = t.arithmetic.rounding.quantize
    act_enc = encoding_from_range(float(x_train.min()), float(x_train.max()), a.qtype, a.scheme, PerTensor())
    if wq.granularity == "per_tensor":
        w_enc = encoding_from_range(float(w.min()), float(w.max()), wq.qtype, wq.scheme, PerTensor())
    else:  # one encoding per output channel (per_block degenerates to per channel for 64 inputs)
        w_enc = encoding_from_range(w.min(axis=1), w.max(axis=1), wq.qtype, wq.scheme, PerAxis(0))
    xq = quantize(x_test, act_enc, rnd)
    x_fq = dequantize(xq, act_enc)
    wqv = quantize(w, w_enc, rnd)
    w_fq = dequantize(wqv, w_enc)
    step_x = float(np.float32(act_enc.scale))
    w_scale = np.float32(w_enc.scale).reshape(-1, 1) if w_enc.scale.ndim else np.float32(w_enc.scale)
    return {
        "activation_encoding": f"{act_enc.dtype} scale={step_x:.6g} zp={int(act_enc.zero_point)}",
        "weight_encoding": f"{w_enc.dtype} {'per-tensor' if w_enc.is_per_tensor else 'per-channel'}",
        "activation_sqnr_db": round(_sqnr_db(x_test, x_fq), 2),
        "weight_sqnr_db": round(_sqnr_db(w, w_fq), 2),
        "activation_max_err_steps": round(float(np.max(np.abs(x_fq - x_test)) / step_x), 4),
        "weight_max_err_steps": round(float(np.max(np.abs(w_fq - w) / w_scale)), 4),
        "saturated": int(np.count_nonzero((xq == act_enc.qmin) & (x_test < x_train.min()))
                         + np.count_nonzero((xq == act_enc.qmax) & (x_test > x_train.max()))),
        "x_fq": x_fq,
        "w_fq": w_fq,
    }


def run_demo(json_output: bool = False) -> int:
    t0 = time.perf_counter()
    x, y = _digits()
    n_train = 1200
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    w, b = _fit_linear(x_train, y_train)
    acc_float = float(np.mean(np.argmax(x_test @ w.T + b, 1) == y_test))
    rows = []
    for name in builtin_names():
        alias = load_alias(name)
        t = load_target(name)
        r = _round_trip(t, x_train, x_test, w)
        acc_q = float(np.mean(np.argmax(r.pop("x_fq") @ r.pop("w_fq").T + b, 1) == y_test))
        rows.append({"target": name, "resolves_to": t.name if alias else None, **r,
                     "accuracy_float": round(acc_float, 4), "accuracy_quantized": round(acc_q, 4)})
    if json_output:
        print(json.dumps({"data": "sklearn digits (1200 train / 597 test)", "targets": rows,
                          "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
        return 0
    print("hwsim demo: quantize/dequantize round trip per target on scikit-learn's digits "
          f"({n_train} train / {len(x_test)} test), linear classifier with fake-quantized operands\n")
    hdr = f"{'target':<14} {'activations':<34} {'weights':<22} {'SQNR x/w dB':>12} {'max err x/w':>12} {'acc fp32':>9} {'acc quant':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        name = r["target"] + (f"->{r['resolves_to'].replace('ort-cpu-', '')}" if r["resolves_to"] else "")
        print(f"{name:<14} {r['activation_encoding']:<34} {r['weight_encoding']:<22} "
              f"{r['activation_sqnr_db']:>5.1f}/{r['weight_sqnr_db']:<6.1f} "
              f"{r['activation_max_err_steps']:>5.3f}/{r['weight_max_err_steps']:<6.3f} "
              f"{r['accuracy_float']:>9.4f} {r['accuracy_quantized']:>9.4f}")
    print(f"\nmax err is in quantization steps (at most 0.5 inside the calibrated range). "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
