"""Plots of a per-layer choice table: score against kept fraction per layer, the chosen option marked."""
from __future__ import annotations

import math


def plot_table(table, choices: dict | None = None, title: str = "per-layer score vs kept fraction") -> bytes:
    """PNG bytes: one curve per (layer, scheme) of ``score(layer, option)`` against the option's kept
    fraction (compression ratios ``[scheme, ratio]``, or numeric options such as bit widths), the
    unchanged model's score as a dashed line, the chosen option of each layer as a filled marker."""
    from quantizer.analysis.report import figure_png, pyplot

    plt = pyplot()
    choices = choices or {}
    n = max(len(table.options), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (layer, opts) in zip(axes.flat, table.options.items()):
        series: dict[str, list] = {}
        for o in opts:
            scheme, x = (o[0], o[1]) if isinstance(o, (list, tuple)) else ("option", o)
            series.setdefault(scheme, []).append((float(x), table.score(layer, o), o))
        for scheme, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=scheme)
            ch = choices.get(layer)
            if ch is not None:
                chosen = [p for p in pts if (list(p[2]) if isinstance(p[2], (list, tuple)) else p[2])
                          == (list(ch) if isinstance(ch, (list, tuple)) else ch)]
                for x, s, _ in chosen:
                    ax.plot([x], [s], marker="o", ms=9, mfc="none", mec="red", mew=2)
        ax.axhline(table.baseline_score, ls="--", c="k", lw=0.8)
        ax.set_title(layer, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(table.options):]:
        ax.axis("off")
    fig.suptitle(title + " (red ring: chosen; dashed: unchanged model)", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)
