"""The analysis report: one self-contained HTML file, ``report.json`` with the same numbers, and
every plot as a PNG, all in one folder and written atomically (:mod:`runtime.atomic`).

A report is a list of :class:`Section`: a key (the JSON key and the HTML anchor), a title, the
numbers (``data``: dicts, lists, numbers, strings and numpy arrays), optional tables (strings, as
they are shown) and plots (PNG bytes by file stem). The HTML embeds each plot as a base64 ``data:``
URI and carries its own style: it opens offline and references no URL.

``report.json`` is ``{"title", "meta", "sections": {key: jsonable(data)}, "plots": {key: [files]}}``
where :func:`jsonable` turns numpy arrays into lists and non-finite floats into ``null``.

>>> jsonable({"a": np.float32([0.5, np.inf]), "b": (np.int64(3), float("nan"))})
{'a': [0.5, None], 'b': [3, None]}
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import HwsimError

_STEM = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Table:
    """Rows of already formatted cells under ``columns``."""

    columns: list[str]
    rows: list[list]
    caption: str = ""


@dataclass
class Section:
    key: str
    title: str
    data: object
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)  # file stem -> PNG bytes


def jsonable(obj):
    """``obj`` with numpy scalars/arrays as Python numbers/lists, tuples as lists, and NaN/Inf as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise HwsimError(f"report: cannot write a {type(obj).__name__} to JSON (expected numbers, strings, lists, dicts "
                     "or numpy arrays)")


# -----------------------------------------------------------------------------------------------
# figures
# -----------------------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (no software/URL metadata), and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


# -----------------------------------------------------------------------------------------------
# writing
# -----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0}figcaption{font-size:.8em;color:#555}img{max-width:100%;height:auto}
nav a{margin-right:1em}.meta{color:#555;font-size:.9em}p{max-width:60em}
"""


def _table_html(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in t.columns)
    rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in t.rows)
    cap = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_html(sections: list[Section], title: str, meta: dict) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if meta:
        parts.append('<p class="meta">' + "; ".join(f"{e(str(k))}: {e(str(v))}" for k, v in meta.items()) + "</p>")
    parts.append("<nav>" + "".join(f'<a href="#{e(s.key)}">{e(s.title)}</a>' for s in sections) + "</nav>")
    for s in sections:
        parts.append(f'<section id="{e(s.key)}"><h2>{e(s.title)}</h2>')
        if s.text:
            parts.extend(f"<p>{e(p)}</p>" for p in s.text.split("\n\n"))
        parts.extend(_table_html(t) for t in s.tables)
        for stem, png in s.plots.items():
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(stem)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{e(stem)}.png</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_json(sections: list[Section], title: str, meta: dict) -> dict:
    return {"title": title, "meta": jsonable(meta),
            "sections": {s.key: jsonable(s.data) for s in sections},
            "plots": {s.key: [f"{stem}.png" for stem in s.plots] for s in sections}}


def write_report(out_dir, sections: list[Section], title: str = "hwsim analysis",
                 meta: dict | None = None, name: str = "report") -> dict[str, Path]:
    """Write ``<name>.html`` (self-contained), ``<name>.json`` and every plot as ``<stem>.png`` in
    ``out_dir`` (created), atomically; returns ``{"html", "json", "plots": [paths]}``."""
    from runtime.atomic import atomic_write_bytes, atomic_write_text

    meta = dict(meta or {})
    keys, stems = set(), set()
    for s in sections:
        if not isinstance(s, Section):
            raise HwsimError(f"write_report: expected Section objects, found {type(s).__name__}")
        if s.key in keys:
            raise HwsimError(f"write_report: two sections have the key {s.key!r}")
        keys.add(s.key)
        for stem in s.plots:
            if not _STEM.match(stem) or stem in stems or stem in (name,):
                raise HwsimError(f"write_report: section {s.key!r} has plot name {stem!r}: expected a unique file "
                                 "stem of letters, digits, '_', '-', '.'")
            stems.add(stem)
    out = Path(out_dir)
    doc = json.dumps(report_json(sections, title, meta), indent=1, allow_nan=False)
    plots = [atomic_write_bytes(out / f"{stem}.png", png) for s in sections for stem, png in s.plots.items()]
    j = atomic_write_text(out / f"{name}.json", doc)
    h = atomic_write_text(out / f"{name}.html", render_html(sections, title, meta))
    return {"html": h, "json": j, "plots": plots}


def plot_stem(*parts: str) -> str:
    """A file stem from names that may hold '/', ':' or spaces (e.g. a layer name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)).strip("_") or "plot"
