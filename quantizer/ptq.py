"""Post-training quantization pipelines: explicit step lists and ``auto``.

A pipeline runs on a calibrated simulation model. Batch-norm folding always happens when the model
is captured (:func:`hwsim.simulate`), so it is reported, not run. The steps, in their fixed order:

``ranges``
    activation range setting: each of :data:`RANGE_SCHEMES` is tried for every activation (the
    weights keep the calibration's weight scheme); the best-scoring scheme is kept.
``cle``
    cross-layer equalization with high-bias absorption (:func:`quantizer.cle.equalize`, ReLU6 bounds
    kept exact), then recalibration (activation ranges move with the scales).
``bias-correction``
    empirical bias correction on the calibration data (:func:`quantizer.bias_correction.correct_bias_empirical`);
    ``bias-correction-analytical`` is the data-free form.
``adaround``
    AdaRound of every Conv/Gemm weight (:func:`quantizer.adaround.adaround`).

With an explicit list (``"cle,bias-correction,adaround"``) every named step is applied. With
``"auto"`` the steps ``ranges, cle, bias-correction, adaround`` are tried in order, each on a copy
of the current model, and a step is **kept only if it improves the held-out score** (strictly:
``score(candidate) > score(current)``); otherwise the copy is dropped. Scores are anything
comparable: :func:`accuracy_score` gives ``(top-1 accuracy, output SQNR)`` so that a tie in accuracy
on a small held-out set is broken by the SQNR against the float model; :func:`sqnr_score` gives the
SQNR alone (data without labels). Every decision is returned and can be printed with :func:`format_report`.

>>> parse_steps("auto"), parse_steps("cle, adaround"), parse_steps("none")
(('ranges', 'cle', 'bias-correction', 'adaround'), ('cle', 'adaround'), ())
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from runtime.errors import DataError, HwsimError

STEPS = ("ranges", "cle", "bias-correction", "bias-correction-analytical", "adaround")
AUTO_STEPS = ("ranges", "cle", "bias-correction", "adaround")
RANGE_SCHEMES = ("minmax", "tf_enhanced", "percentile", "mse")

__all__ = ["STEPS", "AUTO_STEPS", "parse_steps", "run_ptq", "accuracy_score", "sqnr_score", "format_report"]


def parse_steps(spec) -> tuple[str, ...]:
    """``"auto"`` → :data:`AUTO_STEPS`; ``"none"`` or ``""`` → no step; otherwise a comma-separated
    (or listed) subset of :data:`STEPS`, put in the pipeline's order."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "auto":
            return AUTO_STEPS
        if s in ("", "none", "nearest"):
            return ()
        names = [p.strip() for p in s.split(",") if p.strip()]
    else:
        names = [str(p).strip().lower() for p in spec]
    aliases = {"bc": "bias-correction", "bias_correction": "bias-correction", "equalize": "cle",
               "range-setting": "ranges", "bias-correction-empirical": "bias-correction"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise HwsimError(f"--ptq: unknown step(s) {unknown}; expected 'auto', 'none' or a comma-separated list of "
                         f"{list(STEPS)}")
    if "bias-correction" in names and "bias-correction-analytical" in names:
        raise HwsimError("--ptq: choose one of bias-correction (empirical) and bias-correction-analytical")
    return tuple(s for s in STEPS if s in names)


# ------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------
def _batches(x, batch_size: int):
    x = torch.as_tensor(x)
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


@torch.no_grad()
def _outputs(sim, x, batch_size: int, mode: str) -> torch.Tensor:
    saved = sim.mode
    sim.mode = mode
    try:
        return torch.cat([sim(b).detach().float() for b in _batches(x, batch_size)])
    finally:
        sim.mode = saved


def _sqnr_db(ref: torch.Tensor, y: torch.Tensor) -> float:
    noise = float(((ref.double() - y.double()) ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def sqnr_score(x, batch_size: int = 256, mode: str = "fast"):
    """A score function: the SQNR (dB) of the simulation's output against its float output on ``x``."""
    def score(sim) -> float:
        return _sqnr_db(_outputs(sim, x, batch_size, "float"), _outputs(sim, x, batch_size, mode))
    score.description = f"output SQNR vs float ({mode} mode, {len(x)} samples)"
    return score


def accuracy_score(x, labels, batch_size: int = 256, mode: str = "fast"):
    """A score function: ``(top-1 accuracy, output SQNR dB)`` of the simulation on ``(x, labels)``."""
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if len(y) != len(x):
        raise DataError(f"accuracy_score: {len(x)} samples but {len(y)} labels")

    def score(sim) -> tuple[float, float]:
        out = _outputs(sim, x, batch_size, mode)
        acc = float((out.argmax(1) == y).double().mean())
        return acc, _sqnr_db(_outputs(sim, x, batch_size, "float"), out)
    score.description = f"top-1 accuracy, then output SQNR ({mode} mode, {len(x)} held-out samples)"
    return score


def _fmt(score) -> str:
    if isinstance(score, tuple):
        return f"acc {score[0]:.2%}, SQNR {score[1]:.2f} dB"
    return f"{score:.4g}"


# ------------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------------
def _recalibrate(sim, calib, progress: bool, **override) -> None:
    opts = dict(getattr(sim, "calibration", {}) or {})
    opts.update(override)
    sim.calibrate(calib, progress=progress, **opts)


def _step_cle(sim, calib, progress, options):
    from .cle import equalize

    pairs = equalize(sim, progress=progress, **options.get("cle", {}))
    _recalibrate(sim, calib, progress)
    return {"pairs": len(pairs), "layers": sorted({p["first"] for p in pairs} | {p["second"] for p in pairs})}


def _step_bc(sim, calib, progress, options):
    from .bias_correction import correct_bias_empirical

    rep = correct_bias_empirical(sim, calib, progress=progress)
    return {"layers": len(rep), "max_shift": max((r["shift"] for r in rep), default=0.0)}


def _step_bc_analytical(sim, calib, progress, options):
    from .bias_correction import correct_bias_analytical

    rep = correct_bias_analytical(sim)
    return {"layers": len(rep), "max_shift": max((r["shift"] for r in rep), default=0.0)}


def _step_adaround(sim, calib, progress, options):
    from .adaround import adaround

    res = adaround(sim, calib, progress=progress, **options.get("adaround", {}))
    return {"layers": len(res["layers"]), "seconds_per_layer": res["seconds_per_layer"],
            "peak_rss_mb": res["peak_rss_mb"], "fallback": [n for n, r in res["layers"].items() if r["fallback"]]}


_RUN = {"cle": _step_cle, "bias-correction": _step_bc, "bias-correction-analytical": _step_bc_analytical,
        "adaround": _step_adaround}


def _adopt(sim, other) -> None:
    """Make ``sim`` (the caller's object) the model ``other`` holds."""
    sim.__dict__.update(other.__dict__)


def _check_calibrated(sim) -> None:
    missing = [q.tensor_name for q in list(sim.act_q.values()) + list(sim.weight_q.values()) if q.encoding is None]
    if missing:
        raise HwsimError(f"run_ptq: tensors {missing[:5]} have no encodings: call sim.calibrate(...) first")


def run_ptq(sim, calib, steps="auto", score_fn=None, *, options: dict | None = None, progress: bool = True) -> dict:
    """Run a PTQ pipeline on the calibrated ``sim`` in place (see the module docstring).

    ``calib``: calibration batches (a list of tensors, re-iterated by several steps). ``steps``:
    ``"auto"``, ``"none"``, a comma-separated string or a sequence of :data:`STEPS`. ``score_fn(sim)``
    (higher is better; e.g. :func:`accuracy_score` on held-out data) is required by ``auto`` and
    optional otherwise (then every step's effect is measured and reported). ``options``: keyword
    arguments per step, e.g. ``{"adaround": {"iterations": 500}, "cle": {"relu6": "relu"}}``, and
    ``{"ranges": {"schemes": [...]}}``.

    Returns ``{"mode": "auto"|"list", "steps": [...], "baseline": score, "final": score,
    "decisions": [{"step", "kept", "score_before", "score_after", "seconds", "details"}],
    "bn_folded": [(layer, bn)], "seconds": total}``.
    """
    auto = isinstance(steps, str) and steps.strip().lower() == "auto"
    names = parse_steps(steps)
    options = dict(options or {})
    if auto and score_fn is None:
        raise HwsimError("run_ptq: the auto pipeline keeps a step only where a held-out score improves; pass "
                         "score_fn (e.g. quantizer.ptq.accuracy_score(x_val, y_val) or sqnr_score(x_val))")
    calib = list(calib)
    if not calib:
        raise DataError("run_ptq: the calibration data is empty")
    _check_calibrated(sim)
    t_all = time.perf_counter()
    current = sim
    best = score_fn(current) if score_fn is not None else None
    report = {"mode": "auto" if auto else "list", "steps": list(names), "baseline": best,
              "score": getattr(score_fn, "description", None) if score_fn is not None else None,
              "bn_folded": [list(p) for p in getattr(sim.cap, "folded", [])], "decisions": []}
    for name in names:
        t0 = time.perf_counter()
        cand = copy.deepcopy(current) if auto else current
        if name == "ranges":
            if score_fn is None:
                raise HwsimError("run_ptq: the ranges step chooses a range scheme by a score; pass score_fn")
            details, cand, after = _try_ranges(current, calib, score_fn, progress, options.get("ranges", {}))
        else:
            details = _RUN[name](cand, calib, progress, options)
            after = score_fn(cand) if score_fn is not None else None
        kept = (not auto) or after > best
        if kept:
            current = cand
            before, best = best, after
        else:
            before = best
        report["decisions"].append({"step": name, "kept": bool(kept), "score_before": before, "score_after": after,
                                    "seconds": time.perf_counter() - t0, "details": details})
    if current is not sim:
        _adopt(sim, current)
    report["final"] = best
    report["seconds"] = time.perf_counter() - t_all
    return report


def _try_ranges(sim, calib, score_fn, progress, opts):
    """Each activation range scheme on a copy; the best-scoring copy (ties: the first, i.e. the
    current scheme is listed first)."""
    schemes = list(opts.get("schemes", RANGE_SCHEMES))
    cur = (getattr(sim, "calibration", {}) or {}).get("scheme", "minmax")
    order = [cur] + [s for s in schemes if s != cur]
    tried, best_sim, best_score = {}, None, None
    for sc in order:
        cand = copy.deepcopy(sim)
        _recalibrate(cand, calib, progress, scheme=sc)
        s = score_fn(cand) if score_fn is not None else None
        tried[sc] = s
        if best_sim is None or (s is not None and s > best_score):
            best_sim, best_score = cand, s
    return {"tried": tried, "chosen": best_sim.calibration["scheme"]}, best_sim, best_score


def format_report(report: dict) -> str:
    """The decisions as text lines."""
    lines = []
    if report.get("bn_folded"):
        lines.append(f"  bn-fold: {len(report['bn_folded'])} batch norms folded into their layers at capture")
    if report.get("score"):
        lines.append(f"  score: {report['score']}")
    if report.get("baseline") is not None:
        lines.append(f"  nearest rounding: {_fmt(report['baseline'])}")
    for d in report["decisions"]:
        verdict = "kept" if d["kept"] else "dropped (no improvement)"
        sc = f"{_fmt(d['score_after'])}" if d["score_after"] is not None else "not scored"
        extra = ""
        if d["step"] == "ranges":
            extra = f"; chose {d['details']['chosen']}"
        lines.append(f"  {d['step']}: {sc} -> {verdict} ({d['seconds']:.1f} s{extra})")
    if report.get("final") is not None:
        lines.append(f"  final: {_fmt(report['final'])}")
    return "\n".join(lines)
