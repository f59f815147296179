"""Automatic per-layer choices against a cost target: AIMET's greedy selection, generic over options.

Each layer has a list of **options** (for compression ``(scheme, ratio)``, the ratio being the kept
fraction of the layer's weights: rank for SVD, input channels for pruning; for mixed precision a
bit width) and a **default**, the layer left as it is. :func:`build_table` measures, for every
(layer, option), the score ``eval_fn(model with only that change)`` (higher is better) and the
model's cost with only that change; the table is cached in a JSON file keyed by a hash of the
model's weights and a caller's key, entry by entry, so that reruns (and runs with more candidates)
only evaluate what is missing.

:func:`greedy_select` then picks one option (or the default) per layer:

    for a threshold t:  o_l(t) = the cheapest option of layer l with score(l, o) >= t (else default)
    cost(t) ~ base + sum_l (cost(l, o_l(t)) - base)          (per-layer savings add up)

``cost(t)`` only grows with ``t``; a binary search over the table's scores finds the largest ``t``
whose estimated cost is at most ``target * base``, and, given the true cost of a choice
(``actual_cost``), steps ``t`` down until the true cost meets the target too (savings of neighbouring
pruned layers overlap). The predicted score adds the per-layer drops:
``baseline + sum_l (score(l, o_l) - baseline)``.

:func:`select_ratios` and :func:`compress` are this machinery for spatial SVD, weight SVD and
channel pruning.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from runtime.atomic import atomic_write_text
from runtime.errors import HwsimError

from .cost import COST_KINDS, model_cost
from .pruning import _first_batch, _keep_count, prune_channels, pruning_path
from .svd import full_rank, rank_for_ratio, spatial_svd, weight_svd

SCHEMES = ("spatial_svd", "weight_svd", "channel_pruning")
DEFAULT_CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TABLE_FORMAT = "hwsim-choice-table"
TABLE_VERSION = 1


def option_key(option) -> str:
    """The canonical text of an option (its JSON): the key of the table and of the cache.

    >>> option_key(("spatial_svd", 0.5)), option_key(4)
    ('["spatial_svd", 0.5]', '4')
    """
    return json.dumps(option)


def weights_hash(model: nn.Module) -> str:
    """sha256 of the model's state (names, dtypes, shapes, bytes of every parameter and buffer)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -----------------------------------------------------------------------------------------------
# the table
# -----------------------------------------------------------------------------------------------
@dataclass
class Table:
    """Scores and costs of the model with one layer changed to one option."""

    baseline_score: float
    baseline_cost: float
    options: dict[str, list]                      # layer -> its options, in order
    scores: dict[str, dict[str, float]] = field(default_factory=dict)   # layer -> option key -> score
    costs: dict[str, dict[str, float]] = field(default_factory=dict)    # layer -> option key -> model cost

    def score(self, layer: str, option) -> float:
        return self.scores[layer][option_key(option)]

    def cost(self, layer: str, option) -> float:
        return self.costs[layer][option_key(option)]

    def to_json(self) -> dict:
        return {"baseline": {"score": self.baseline_score, "cost": self.baseline_cost},
                "layers": {layer: [{"option": o, "score": self.score(layer, o), "cost": self.cost(layer, o)}
                                   for o in opts] for layer, opts in self.options.items()}}


def _load_cache(path: Path | None, fingerprint: str) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is recomputed, never trusted
    if (not isinstance(data, dict) or data.get("format") != TABLE_FORMAT or data.get("version") != TABLE_VERSION
            or data.get("fingerprint") != fingerprint):
        return {}
    return data


def build_table(model, options: dict[str, list], apply: Callable[[Any, str, Any], Any],
                eval_fn: Callable[[Any], float], cost_fn: Callable[[Any], float], cache_path=None,
                cache_key: str = "", progress: bool = True) -> Table:
    """Evaluate every ``(layer, option)``: ``m = apply(model, layer, option)`` (a changed copy; ``model``
    stays as it is), ``score = eval_fn(m)``, ``cost = cost_fn(m)``; plus the unchanged model.

    With ``cache_path``, entries are read from and written to that JSON file (atomically, after each
    layer), valid while the fingerprint matches: the model's weights hash (for an ``nn.Module``) and
    ``cache_key`` (say there what else the scores depend on: schemes, cost kind, data). Options must be
    JSON values (numbers, strings, lists)."""
    fingerprint = hashlib.sha256(((weights_hash(model) if isinstance(model, nn.Module) else "") + "|" +
                                  cache_key).encode()).hexdigest()
    path = Path(cache_path) if cache_path is not None else None
    data = _load_cache(path, fingerprint)
    entries = data.get("entries", {})
    base = data.get("baseline")

    def save():
        if path is not None:
            atomic_write_text(path, json.dumps({"format": TABLE_FORMAT, "version": TABLE_VERSION,
                                                "fingerprint": fingerprint, "cache_key": cache_key,
                                                "baseline": base, "entries": entries}, indent=1))

    todo = [(layer, o) for layer, opts in options.items() for o in opts
            if option_key(o) not in entries.get(layer, {})]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) + (base is None), desc="evaluate options", unit="eval", leave=False)
    try:
        if base is None:
            base = {"score": float(eval_fn(model)), "cost": float(cost_fn(model))}
            save()
            if bar is not None:
                bar.update()
        for layer, opts in options.items():
            done = entries.setdefault(layer, {})
            for o in opts:
                key = option_key(o)
                if key in done:
                    continue
                m = apply(model, layer, o)
                done[key] = {"score": float(eval_fn(m)), "cost": float(cost_fn(m))}
                if bar is not None:
                    bar.set_postfix_str(f"{layer} {key}")
                    bar.update()
            save()
    finally:
        if bar is not None:
            bar.close()
    return Table(base["score"], base["cost"], {k: list(v) for k, v in options.items()},
                 {layer: {option_key(o): entries[layer][option_key(o)]["score"] for o in opts}
                  for layer, opts in options.items()},
                 {layer: {option_key(o): entries[layer][option_key(o)]["cost"] for o in opts}
                  for layer, opts in options.items()})


# -----------------------------------------------------------------------------------------------
# greedy selection
# -----------------------------------------------------------------------------------------------
def choose_at(table: Table, threshold: float, fixed: dict | None = None) -> dict:
    """``{layer: option}``: per layer of the table, the cheapest option (ties: the higher score) whose
    score is at least ``threshold`` and whose cost is below the baseline; layers without one keep the
    default (absent). ``fixed`` choices are included as they are."""
    out = dict(fixed or {})
    for layer, opts in table.options.items():
        if layer in out:
            continue
        best = None
        for o in opts:
            s, c = table.score(layer, o), table.cost(layer, o)
            if s >= threshold and c < table.baseline_cost and (
                    best is None or (c, -s) < (table.cost(layer, best), -table.score(layer, best))):
                best = o
        if best is not None:
            out[layer] = best
    return out


def estimated_cost(table: Table, choice: dict, fixed_delta: float = 0.0) -> float:
    """``base + fixed_delta + sum_l (cost(l, o_l) - base)`` over the table's layers in ``choice``."""
    return table.baseline_cost + fixed_delta + sum(table.cost(layer, o) - table.baseline_cost
                                                   for layer, o in choice.items() if layer in table.options)


def predicted_score(table: Table, choice: dict) -> float:
    """``baseline + sum_l (score(l, o_l) - baseline)`` over the table's layers in ``choice``."""
    return table.baseline_score + sum(table.score(layer, o) - table.baseline_score
                                      for layer, o in choice.items() if layer in table.options)


def greedy_select(table: Table, target_cost: float, fixed: dict | None = None, fixed_delta: float = 0.0,
                  actual_cost: Callable[[dict], float] | None = None) -> tuple[dict, float, float]:
    """``(choice, threshold, cost)``: the choice at the highest score threshold whose cost is at most
    ``target_cost * baseline_cost`` (module docstring). ``fixed`` choices (with estimated cost change
    ``fixed_delta``) are kept; ``actual_cost(choice)``, when given, is the true cost checked last, and
    ``cost`` is it (else the estimate). Raises :class:`HwsimError` when no threshold reaches the target.

    >>> t = Table(1.0, 100.0, {"a": [0.5], "b": [0.5]}, {"a": {"0.5": 0.9}, "b": {"0.5": 0.6}},
    ...           {"a": {"0.5": 70.0}, "b": {"0.5": 70.0}})
    >>> greedy_select(t, 0.75)        # "a" alone (score 0.9) saves 30 %
    ({'a': 0.5}, 0.9, 70.0)
    """
    if not (isinstance(target_cost, (int, float)) and target_cost > 0):
        raise HwsimError(f"target_cost must be a positive fraction of the model's cost, found {target_cost!r}")
    goal = target_cost * table.baseline_cost
    thresholds = sorted({s for per in table.scores.values() for s in per.values() if not math.isnan(s)})
    thresholds.append(math.inf)  # nothing but the fixed choices

    def est(i):
        return estimated_cost(table, choose_at(table, thresholds[i], fixed), fixed_delta)

    lo, hi = 0, len(thresholds) - 1
    if est(lo) > goal * (1 + 1e-12):
        raise HwsimError(f"the cost target {target_cost:g} x {table.baseline_cost:g} = {goal:g} cannot be reached: "
                         f"compressing every layer as far as the candidates allow gives about {est(lo):g} "
                         f"({est(lo) / table.baseline_cost:.3f} of the model); add smaller candidates or more "
                         "schemes, or exclude fewer layers")
    while lo < hi:  # invariant: est(lo) <= goal
        mid = (lo + hi + 1) // 2
        if est(mid) <= goal * (1 + 1e-12):
            lo = mid
        else:
            hi = mid - 1
    i = lo
    choice = choose_at(table, thresholds[i], fixed)
    cost = estimated_cost(table, choice, fixed_delta)
    if actual_cost is not None:
        while True:
            choice = choose_at(table, thresholds[i], fixed)
            cost = float(actual_cost(choice))
            if cost <= goal * (1 + 1e-12):
                break
            if i == 0:
                raise HwsimError(f"the cost target {goal:g} is not reached: the smallest choice the candidates allow "
                                 f"costs {cost:g} ({cost / table.baseline_cost:.3f} of the model)")
            i -= 1
    return choice, thresholds[i], cost


# -----------------------------------------------------------------------------------------------
# compression: options, apply, select, compress
# -----------------------------------------------------------------------------------------------
def _parent(model: nn.Module, name: str):
    parent, _, child = name.rpartition(".")
    return model.get_submodule(parent) if parent else model, child


def _rank(layer: nn.Module, scheme: str, ratio: float) -> int:
    return rank_for_ratio(layer, float(ratio), scheme)


def _applicable(model: nn.Module, name: str, layer: nn.Module, scheme: str) -> tuple[str | None, int]:
    """``(why not, size)``: why ``scheme`` does not apply to ``layer`` (None when it does), and the full
    size (the prunable channels, or the full rank)."""
    conv = isinstance(layer, nn.Conv2d)
    if conv and layer.groups != 1:
        return f"groups={layer.groups}", 0
    if scheme == "spatial_svd" and (not conv or min(layer.kernel_size) < 2):
        return "spatial SVD needs a Conv2d with a kernel of at least 2 x 2", 0
    if scheme == "weight_svd" and conv and tuple(layer.kernel_size) != (1, 1):
        return "weight SVD needs a Linear or a 1x1 Conv2d", 0
    if scheme == "channel_pruning":
        try:
            return None, pruning_path(model, name).channels
        except HwsimError as e:
            return str(e), 0
    return None, full_rank(layer, scheme)


def _shrinks(layer: nn.Module, scheme: str, size: int, full: int) -> bool:
    """Whether rank (or kept channels) ``size`` leaves fewer weights than the layer has."""
    w = layer.weight
    if scheme == "channel_pruning":
        return size < full
    per_rank = w.shape[1] * w.shape[2] + w.shape[0] * w.shape[3] if scheme == "spatial_svd" else w.shape[0] + w.shape[1]
    return size * per_rank < w.numel()


def _excluded(name: str, layer: nn.Module, exclude) -> bool:
    for e in exclude:
        if isinstance(e, type) and isinstance(layer, e):
            return True
        if isinstance(e, str) and fnmatch.fnmatchcase(name, e):
            return True
    return False


def compression_options(model: nn.Module, candidates=DEFAULT_CANDIDATES, schemes=("spatial_svd", "weight_svd"),
                        exclude=()) -> tuple[dict[str, list], dict[str, str]]:
    """``(options, skipped)``: per compressible Conv2d/Linear, its ``[scheme, ratio]`` options (one per
    distinct rank or channel count, the smallest ratio naming it, and only those that shrink the
    layer); per layer with no option, why. ``exclude`` holds names (fnmatch patterns) or module types."""
    for s in schemes:
        if s not in SCHEMES:
            raise HwsimError(f"scheme must be one of {SCHEMES}, found {s!r}")
    for r in candidates:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise HwsimError(f"candidates are kept fractions in (0, 1], found {r!r}")
    options, skipped = {}, {}
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        if _excluded(name, layer, exclude):
            skipped[name] = "excluded"
            continue
        opts, why = [], []
        for scheme in schemes:
            reason, full = _applicable(model, name, layer, scheme)
            if reason is not None:
                why.append(f"{scheme}: {reason}")
                continue
            seen = set()
            for r in sorted(candidates):
                size = (_keep_count(float(r), full, name) if scheme == "channel_pruning"
                        else _rank(layer, scheme, r))
                if size in seen or not _shrinks(layer, scheme, size, full):
                    continue
                seen.add(size)
                opts.append([scheme, r])
        if opts:
            options[name] = opts
        else:
            skipped[name] = "; ".join(why) or "no candidate shrinks it"
    return options, skipped


def _as_choices(model: nn.Module, ratios, scheme: str | None) -> dict[str, tuple[str, float]]:
    if isinstance(ratios, Selection):
        ratios = ratios.choices
    if not isinstance(ratios, dict):
        raise HwsimError(f"compress: expected a Selection or a dict of per-layer ratios, found {type(ratios).__name__}")
    out = {}
    mods = dict(model.named_modules())
    for name, v in ratios.items():
        if name not in mods:
            raise HwsimError(f"compress: no module named {name!r} in the model (e.g. {list(mods)[1:6]})")
        if isinstance(v, (tuple, list)):
            if len(v) != 2 or v[0] not in SCHEMES:
                raise HwsimError(f"compress: {name!r}: expected (scheme, ratio) with scheme in {SCHEMES}, found {v!r}")
            out[name] = (v[0], v[1])
        else:
            if scheme is None:
                raise HwsimError(f"compress: {name!r} has ratio {v!r} without a scheme; pass scheme= or "
                                 "(scheme, ratio)")
            if scheme not in SCHEMES:
                raise HwsimError(f"compress: scheme must be one of {SCHEMES}, found {scheme!r}")
            out[name] = (scheme, v)
        r = out[name][1]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise HwsimError(f"compress: {name!r}: the ratio is a kept fraction in (0, 1], found {r!r}")
    return out


def compress(model: nn.Module, ratios, scheme: str | None = None, samples=None, method: str = "greedy",
             max_positions: int = 512, seed: int = 0) -> nn.Module:
    """A compressed copy of ``model``: ``ratios`` is a :class:`Selection`, ``{layer: (scheme, ratio)}``,
    or ``{layer: ratio}`` with one ``scheme`` for all; ratio = kept fraction (rank via
    :func:`~quantizer.compress.svd.rank_for_ratio`, input channels rounded to the nearest count). The
    SVD layers are replaced first (by two-layer ``nn.Sequential``), then channels are pruned in model
    order (``samples`` are needed for that, see :func:`~quantizer.compress.pruning.prune_channels`).
    A ratio of 1 leaves the layer as it is."""
    choices = _as_choices(model, ratios, scheme)
    out = copy.deepcopy(model)
    order = [n for n, _ in model.named_modules()]
    for name in sorted(choices, key=order.index):
        sch, r = choices[name]
        if sch == "channel_pruning" or r == 1:
            continue
        layer = out.get_submodule(name)
        rank = _rank(layer, sch, r)
        new = spatial_svd(layer, rank) if sch == "spatial_svd" else weight_svd(layer, rank)
        parent, child = _parent(out, name)
        setattr(parent, child, new)
    for name in sorted(choices, key=order.index):
        sch, r = choices[name]
        if sch != "channel_pruning" or r == 1:
            continue
        if samples is None:
            raise HwsimError(f"compress: channel pruning of {name!r} needs samples (batches of model inputs)")
        out = prune_channels(out, name, float(r), samples, method=method, max_positions=max_positions, seed=seed)
    return out


@dataclass
class Selection:
    """The chosen option per layer (layers absent stay as they are), with what the choice rests on."""

    choices: dict[str, Any]
    table: Table
    cost: str
    target_cost: float
    cost_before: float
    cost_after: float
    predicted_score: float
    threshold: float
    skipped: dict[str, str] = field(default_factory=dict)
    manual: dict[str, Any] = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float]:
        """``{layer: ratio}`` of compression choices."""
        return {k: v[1] for k, v in self.choices.items()}

    @property
    def schemes(self) -> dict[str, str]:
        return {k: v[0] for k, v in self.choices.items()}

    def to_json(self) -> dict:
        return {"choices": {k: list(v) if isinstance(v, tuple) else v for k, v in self.choices.items()},
                "cost": self.cost, "target_cost": self.target_cost, "cost_before": self.cost_before,
                "cost_after": self.cost_after, "cost_fraction": self.cost_after / self.cost_before,
                "baseline_score": self.table.baseline_score, "predicted_score": self.predicted_score,
                "threshold": self.threshold, "skipped": self.skipped,
                "manual": {k: list(v) if isinstance(v, tuple) else v for k, v in self.manual.items()},
                "table": self.table.to_json()}


def select_ratios(model: nn.Module, eval_fn: Callable[[nn.Module], float], candidates=DEFAULT_CANDIDATES,
                  target_cost: float = 0.5, cost: str = "macs", schemes=("spatial_svd", "weight_svd"), exclude=(),
                  cache_path=None, progress: bool = True, manual: dict | None = None, samples=None,
                  example_input=None, method: str = "greedy", max_positions: int = 512,
                  hardware: dict | None = None, cache_key: str = "") -> Selection:
    """Per-layer compression ratios reaching ``target_cost`` (a fraction of the model's ``cost``:
    ``"macs"``, ``"params"``, ``"bytes"``, or ``"latency"`` with ``hardware`` = keyword arguments of
    :func:`~quantizer.compress.cost.layer_costs`) with the least loss of ``eval_fn(model)`` (higher
    is better), by :func:`build_table` over ``schemes`` x ``candidates`` and :func:`greedy_select`
    (module docstring). The true cost of the choice is measured and meets the target.

    ``exclude``: layer names (fnmatch patterns) or module types left alone. ``manual``:
    ``{layer: ratio or (scheme, ratio)}`` fixed as given (a bare ratio needs a layer with exactly one
    applicable scheme), not evaluated. ``samples`` (batches of model inputs) feed channel pruning and,
    without ``example_input``, the cost model. ``cache_path``: the table's JSON cache, valid for the
    same weights, schemes, cost, pruning settings and example shape; put anything else the scores
    depend on (the evaluation data, the samples) into ``cache_key``."""
    if cost not in COST_KINDS:
        raise HwsimError(f"cost must be one of {COST_KINDS}, found {cost!r}")
    if example_input is None:
        if samples is None:
            raise HwsimError("select_ratios: pass example_input (or samples) for the cost model's forward pass")
        example_input = _first_batch(samples)
    if "channel_pruning" in schemes and samples is None:
        raise HwsimError("select_ratios: the channel_pruning scheme needs samples (batches of model inputs)")
    hardware = dict(hardware or {})
    options, skipped = compression_options(model, candidates, schemes, exclude)
    fixed = {}
    for name, v in (manual or {}).items():
        if not isinstance(v, (tuple, list)):
            applicable = [s for s in schemes if name in options and any(o[0] == s for o in options[name])]
            if len(applicable) != 1:
                raise HwsimError(f"select_ratios: manual ratio {v!r} for {name!r}: name the scheme, (scheme, ratio); "
                                 f"applicable schemes: {applicable or 'none'}")
            v = (applicable[0], v)
        fixed[name] = tuple(v)
    fixed = _as_choices(model, fixed, None)
    for name in fixed:
        options.pop(name, None)

    def cost_of(m):
        return model_cost(m, example_input, cost, **hardware)

    def apply(m, layer, option):
        return compress(m, {layer: tuple(option)}, samples=samples, method=method, max_positions=max_positions)

    ex = example_input[0] if isinstance(example_input, (tuple, list)) else example_input
    key = json.dumps({"user": cache_key, "schemes": list(schemes), "cost": cost, "hardware": hardware,
                      "method": method, "max_positions": max_positions, "example": list(ex.shape)}, sort_keys=True)
    table = build_table(model, options, apply, eval_fn, cost_of, cache_path=cache_path, cache_key=key,
                        progress=progress)
    fixed_delta = cost_of(compress(model, fixed, samples=samples, method=method, max_positions=max_positions)) \
        - table.baseline_cost if fixed else 0.0

    def actual(choice):
        return cost_of(compress(model, choice, samples=samples, method=method, max_positions=max_positions))

    choice, threshold, after = greedy_select(table, target_cost, fixed, fixed_delta, actual)
    choice = {k: tuple(v) for k, v in choice.items()}
    order = [n for n, _ in model.named_modules()]
    choice = {k: choice[k] for k in sorted(choice, key=order.index)}
    return Selection(choice, table, cost, target_cost, table.baseline_cost, after, predicted_score(table, choice),
                     threshold, skipped, fixed)
