"""``hwsim compress``: spatial/weight SVD and channel pruning with automatic per-layer ratios.

    hwsim compress MODEL --scheme spatial-svd,channel-pruning --target-cost macs=0.5 \\
        --data DATA [--labels LABELS] --out DIR [--json]

The score that ranks per-layer ratios is top-1 accuracy on (DATA, LABELS), or, without labels, the
output SQNR (dB) against the uncompressed float model. DIR receives ``<name>_compressed.onnx`` (the
compressed float model, batch norms folded), ``<name>_compression.json`` (the chosen ratios, costs,
scores and the whole layer x ratio table) and ``compression_table.json`` (the cache that makes a rerun
with the same model, data and settings evaluate nothing), and ``<name>_ratios.png`` (per layer: score
against kept fraction, the chosen ratio marked).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from runtime.errors import HwsimError

SCHEME_NAMES = {"spatial-svd": "spatial_svd", "weight-svd": "weight_svd", "channel-pruning": "channel_pruning"}


def add_compress_parser(sub) -> None:
    c = sub.add_parser("compress", help="compress a float model (SVD, channel pruning) to a target cost")
    c.add_argument("model", help="float ONNX file, or package.module:ModelClass (with --checkpoint)")
    c.add_argument("--checkpoint")
    c.add_argument("--scheme", default="spatial-svd,channel-pruning",
                   help="comma-separated: spatial-svd, weight-svd, channel-pruning")
    c.add_argument("--target-cost", default="macs=0.5", metavar="KIND=FRACTION",
                   help="macs|params|bytes|latency = kept fraction (latency needs --target with a [cost] table)")
    c.add_argument("--target", help="target whose [cost] table (MACs per cycle, clock, bandwidth) gives latency")
    c.add_argument("--data", required=True, help="evaluation data (.npz keyed by input name, or one array)")
    c.add_argument("--labels", help=".npy integer labels of --data (score = accuracy; default: SQNR vs float)")
    c.add_argument("--eval-samples", type=int, default=500, help="samples of --data the ratio search evaluates")
    c.add_argument("--candidates", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="kept fractions tried per layer")
    c.add_argument("--exclude", nargs="*", default=(), help="layer names (glob patterns) to leave alone")
    c.add_argument("--ratios", help="manual ratios instead of the search: layer=scheme:ratio,... ")
    c.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune the compressed model on (--data, --labels) for this many epochs")
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--out", required=True)
    c.add_argument("--name", default="model")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compress)


def _parse_target_cost(spec: str) -> tuple[str, float]:
    kind, _, frac = spec.partition("=")
    try:
        f = float(frac)
    except ValueError:
        f = math.nan
    if kind not in ("macs", "params", "bytes", "latency") or not 0 < f <= 1:
        raise HwsimError(f"--target-cost: expected KIND=FRACTION with KIND macs|params|bytes|latency and 0 < FRACTION "
                         f"<= 1, found {spec!r}")
    return kind, f


def _parse_manual(spec: str | None) -> dict | None:
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        layer, _, rest = item.partition("=")
        scheme, _, ratio = rest.rpartition(":")
        try:
            r = float(ratio)
        except ValueError:
            raise HwsimError(f"--ratios: expected layer=scheme:ratio, found {item!r}") from None
        if scheme and scheme not in SCHEME_NAMES:
            raise HwsimError(f"--ratios: scheme {scheme!r} in {item!r} is not one of {list(SCHEME_NAMES)}")
        out[layer.strip()] = (SCHEME_NAMES[scheme], r) if scheme else r
    return out


def _hardware(target_name: str | None) -> dict:
    if not target_name:
        raise HwsimError("--target-cost latency=...: pass --target, whose [cost] table describes the compute")
    from runtime.target import load_target

    t = load_target(target_name)
    cost = t.cost  # runtime.target.Cost, validated when the target loads
    if cost is None:
        raise HwsimError(f"target {t.name!r} has no [cost] table (macs_per_cycle, clock_mhz, memory_bandwidth_gbps)")
    hw = {"macs_per_cycle": float(cost.macs_per_cycle), "clock_hz": float(cost.clock_mhz) * 1e6}
    if cost.memory_bandwidth_gbps is not None:
        hw["bandwidth_bytes_per_s"] = float(cost.memory_bandwidth_gbps) * 1e9
    return hw


def _digest(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p:
            h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def cmd_compress(args) -> int:
    import numpy as np
    import torch

    from hwsim.cli import EXIT_OK, _json_default, _load_model
    from hwsim.data import read_inputs, read_labels
    from quantizer.compress import compress, finetune, model_cost, select_ratios

    schemes = []
    for s in args.scheme.split(","):
        s = s.strip()
        if s not in SCHEME_NAMES:
            raise HwsimError(f"--scheme: {s!r} is not one of {list(SCHEME_NAMES)}")
        schemes.append(SCHEME_NAMES[s])
    kind, frac = _parse_target_cost(args.target_cost)
    hardware = _hardware(args.target) if kind == "latency" else None
    try:
        candidates = tuple(float(v) for v in args.candidates.split(","))
    except ValueError:
        raise HwsimError(f"--candidates: expected comma-separated fractions, found {args.candidates!r}") from None
    model = _load_model(args.model, args.checkpoint)
    if isinstance(model, str):
        from hwsim.onnx_import import import_onnx

        model = import_onnx(model)
        names = list(model.input_names)
    else:
        import torch.fx as fx

        names = [n.target for n in fx.symbolic_trace(model).graph.nodes if n.op == "placeholder"]
    if len(names) != 1:
        raise HwsimError(f"{args.model}: models with {len(names)} inputs are not supported by this command yet")
    x = np.ascontiguousarray(read_inputs(args.data, names)[names[0]], np.float32)
    if len(x) == 0:
        raise HwsimError(f"{args.data}: the data set is empty")
    y = read_labels(args.labels, len(x)) if args.labels else None
    xe = torch.from_numpy(x[:args.eval_samples])
    ye = None if y is None else torch.from_numpy(y[:args.eval_samples].astype(np.int64))
    model.eval()
    with torch.no_grad():
        ref = model(xe).detach()

    @torch.no_grad()
    def score(m) -> float:
        m.eval()
        out = m(xe)
        if ye is not None:
            return float((out.argmax(1) == ye).double().mean())
        noise = float(((out.double() - ref.double()) ** 2).sum())
        return math.inf if noise == 0 else 10 * math.log10(float((ref.double() ** 2).sum()) / noise)

    samples = [torch.from_numpy(x[i:i + 64]) for i in range(0, min(len(x), 512), 64)]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    manual = _parse_manual(args.ratios)
    key = json.dumps({"data": _digest(args.data, args.labels), "n": int(len(xe)), "labels": y is not None})
    sel = select_ratios(model, score, candidates=candidates, target_cost=frac, cost=kind, schemes=tuple(schemes),
                        exclude=tuple(args.exclude), cache_path=out_dir / "compression_table.json",
                        progress=not args.json, manual=manual, samples=samples, hardware=hardware, cache_key=key)
    small = compress(model, sel, samples=samples)
    result = {"model": str(args.model), "score": "accuracy" if y is not None else "output SQNR dB vs float",
              "score_before": score(model), "score_compressed": score(small), **sel.to_json()}
    result["macs_before"] = model_cost(model, samples[0][:1], "macs")
    result["macs_after"] = model_cost(small, samples[0][:1], "macs")
    result["params_before"] = model_cost(model, samples[0][:1], "params")
    result["params_after"] = model_cost(small, samples[0][:1], "params")
    if args.finetune_epochs > 0:
        if y is None:
            raise HwsimError("--finetune-epochs needs --labels")
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        gen = torch.Generator().manual_seed(0)

        def batches():
            perm = torch.randperm(len(xt), generator=gen)
            return [(xt[perm[i:i + 64]], yt[perm[i:i + 64]]) for i in range(0, len(xt), 64)]
        finetune(small, batches, epochs=args.finetune_epochs, lr=args.lr, progress=not args.json)
        result["score_finetuned"] = score(small)
    paths = _write(small, samples[0][:1], out_dir, args.name, result)
    from quantizer.compress.plots import plot_table
    from runtime.atomic import atomic_write_bytes

    paths["plot"] = out_dir / f"{args.name}_ratios.png"
    atomic_write_bytes(paths["plot"], plot_table(sel.table, sel.choices, f"{result['score']} vs kept fraction"))
    result["files"] = {k: str(v) for k, v in paths.items()}
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2, default=_json_default))
        return EXIT_OK
    what = "accuracy" if y is not None else "SQNR (dB)"
    fmt = (lambda v: f"{v:.2%}") if y is not None else (lambda v: f"{v:.2f}")
    print(f"compressed {args.model}: {kind} {result['cost_fraction']:.1%} of the original (target {frac:.0%}); "
          f"MACs {result['macs_before']:.0f} -> {result['macs_after']:.0f}, params {result['params_before']:.0f} -> "
          f"{result['params_after']:.0f}")
    print(f"{what} on {len(xe)} samples: {fmt(result['score_before'])} -> {fmt(result['score_compressed'])}"
          + (f" -> {fmt(result['score_finetuned'])} after fine-tuning" if "score_finetuned" in result else ""))
    for layer, choice in result["choices"].items():
        print(f"  {layer}: {choice[0]} {choice[1]:.2f}")
    for k, v in paths.items():
        print(f"wrote {v}")
    return EXIT_OK


def _write(model, example, out_dir: Path, name: str, result: dict) -> dict:
    """The compressed float model as ONNX (through hwsim's exporter, batch norms folded) and the report."""
    from hwsim.export import build
    from hwsim.sim import simulate
    from runtime.atomic import atomic_write_bytes

    sim = simulate(model, "npu-int8-pc", example)  # capture only: no quantizer is used by the float export
    onnx_path = out_dir / f"{name}_compressed.onnx"
    atomic_write_bytes(onnx_path, build(sim, qdq=False).SerializeToString())
    from hwsim.cli import _json_default

    report_path = out_dir / f"{name}_compression.json"
    atomic_write_bytes(report_path, json.dumps(result, indent=2, default=_json_default).encode())
    return {"onnx": onnx_path, "report": report_path}
