"""Self-contained HTML building blocks for the reports (evaluation, the job's privacy sample):
page shell, tables, inline SVG charts, image grids, and strict JSON. Strings only, no files; no
external assets; images are files next to index.html, referenced relatively."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape

import numpy as np

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1180px;
color:#1d232b;padding:0 16px;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid
#d5dbe3;padding-bottom:.2em}.meta{color:#5b6673;font-size:.9em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}th,td{border:1px solid #d5dbe3;
padding:4px 8px;text-align:right}th{background:#eef2f6}
td:first-child,th:first-child{text-align:left}
tr.bad td{background:#fdecec}tr.na td{color:#8a939d;text-align:left}
th[colspan]{text-align:center}
.grid{display:grid;gap:10px;grid-template-columns:repeat(auto-fill,minmax(150px,1fr))}
.cell{text-align:center;font-size:.78em;color:#5b6673}.cell img{max-width:100%;border-radius:3px}
.row{display:flex;gap:6px;align-items:flex-start;margin-bottom:10px;flex-wrap:wrap}
.row figure{margin:0;text-align:center;font-size:.75em;color:#5b6673}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;font-size:.9em}
dl{font-size:.85em}dt{font-weight:600;margin-top:.4em}dd{margin-left:1.2em;color:#3c4753}
code{font-size:.9em}
"""

# Records, for automated checks, whether every image loaded and whether any script or resource
# error happened; the page itself works without it.
CHECK_SCRIPT = """
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target && e.target.src ? 'resource ' + e.target.src : String(e.message);
  window.__errors.push(t);
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-errors', String(window.__errors.length));
  document.body.setAttribute('data-ready', '1');
});
"""

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """A complete HTML document."""
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style>"
        f"<script>{CHECK_SCRIPT}</script></head>\n<body>\n<h1>{escape(title)}</h1>"
        f'<p class="meta">{escape(subtitle)}</p>\n{body}\n</body></html>\n'
    )


def section(title: str, *parts: str) -> str:
    """A titled section made of already rendered parts."""
    return f"<h2>{escape(title)}</h2>\n" + "\n".join(parts)


def paragraph(text: str, cls: str = "") -> str:
    """An escaped paragraph, optionally with a CSS class."""
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{escape(text)}</p>"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage; a dash when missing."""
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash when missing."""
    return "–" if value is None else f"{value:.{digits}f}"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    classes: Sequence[str] = (),
    groups: Sequence[tuple[str, int]] = (),
) -> str:
    """A table of already formatted cells (escaped here).

    ``classes`` gives a CSS class per row; ``groups`` (label, span) adds a header row above;
    a row shorter than ``headers`` stretches its last cell over the rest.
    """
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    if groups:
        top = "".join(f'<th colspan="{n}">{escape(g)}</th>' for g, n in groups)
        head = f"<tr>{top}</tr><tr>{head}</tr>"
    else:
        head = f"<tr>{head}</tr>"
    body = []
    for k, row in enumerate(rows):
        cls = classes[k] if k < len(classes) and classes[k] else ""
        cells = [f"<td>{escape(str(c))}</td>" for c in row]
        if 0 < len(row) < len(headers):
            cells[-1] = f'<td colspan="{len(headers) - len(row) + 1}">{escape(str(row[-1]))}</td>'
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def definitions(items: dict[str, str]) -> str:
    """A definition list of terms and their explanations."""
    return (
        "<dl>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items.items())
        + "</dl>"
    )


def _text(x: float, y: float, text: str, size: int = 11, anchor: str = "middle", **attrs) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
        f"{escape(text)}</text>"
    )


def _frame(w: int, h: int, m: int) -> str:
    return (
        f'<rect x="{m}" y="10" width="{w - m - 10}" height="{h - m - 10}" '
        'fill="#fafbfc" stroke="#9aa5b1"/>'
    )


def _svg(w: int, h: int, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">'
        f"{''.join(parts)}</svg>"
    )


def _axes(w: int, h: int, m: int, xlabel: str, ylabel: str) -> list[str]:
    parts = [_frame(w, h, m)]
    for t in range(0, 101, 20):
        x = m + (w - m - 10) * t / 100
        y = h - m - (h - m - 20) * t / 100
        parts.append(f'<line x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{h - m}" stroke="#e3e8ee"/>')
        parts.append(f'<line x1="{m}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#e3e8ee"/>')
        parts.append(_text(x, h - m + 16, f"{t}%", anchor="end" if t == 100 else "middle"))
        parts.append(_text(m - 6, y + 4, f"{t}%", anchor="end"))
    parts.append(_text((w + m) / 2, h - 8, xlabel, 12))
    mid = (h - m) / 2
    parts.append(_text(14, mid, ylabel, 12, transform=f"rotate(-90 14 {mid:.1f})"))
    return parts


def _place(x: float, y: float, taken: list[tuple[float, float]]) -> float:
    """A label height near ``y`` that keeps clear of labels already placed around ``x``."""
    candidates = [y + d for d in (0, 15, -15, 30, -30, 45, -45, 60, 75, 90)]
    for cand in candidates:
        if all(abs(cand - ty) >= 14 or abs(x - tx) >= 90 for tx, ty in taken):
            return cand
    return candidates[-1]


def scatter_svg(points: Sequence[tuple[str, float, float]], xlabel: str, ylabel: str) -> str:
    """Labelled points with x and y in [0, 1], drawn as percentages."""
    w, h, m = 640, 380, 56
    parts = _axes(w, h, m, xlabel, ylabel)
    taken: list[tuple[float, float]] = []
    for k, (label, xv, yv) in enumerate(points):
        x = m + (w - m - 10) * min(max(xv, 0.0), 1.0)
        y = h - m - (h - m - 20) * min(max(yv, 0.0), 1.0)
        color = PALETTE[k % len(PALETTE)]
        anchor, dx = ("end", -10) if x > w - 140 else ("start", 10)
        ly = _place(x, min(max(y - 10, 24.0), h - m - 6), taken)
        taken.append((x, ly))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}" fill-opacity=".85"/>')
        parts.append(_text(x + dx, ly, label, 12, anchor, fill=color))
    return _svg(w, h, parts)


def histogram_svg(
    series: Sequence[tuple[str, Sequence[float]]], lo: float, hi: float, xlabel: str
) -> str:
    """Overlaid step histograms (each normalised to its own peak) over [lo, hi]."""
    w, h, m = 640, 260, 44
    parts = [_frame(w, h, m)]
    for k, (label, counts) in enumerate(series):
        peak = max(max(counts, default=0), 1)
        n = max(len(counts), 1)
        pts = []
        for i, c in enumerate(counts):
            x0 = m + (w - m - 10) * i / n
            x1 = m + (w - m - 10) * (i + 1) / n
            y = h - m - (h - m - 20) * c / peak
            pts += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        color = PALETTE[k % len(PALETTE)]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(pts)}"/>'
        )
        parts.append(_text(w - 16, 28 + 16 * k, label, 12, "end", fill=color))
    for t in range(5):
        x, label = m + (w - m - 10) * t / 4, f"{lo + (hi - lo) * t / 4:.2f}"
        parts.append(_text(x, h - m + 16, label, anchor="end" if t == 4 else "middle"))
    parts.append(_text((w + m) / 2, h - 8, xlabel, 12))
    return _svg(w, h, parts)


def image_row(title: str, images: Sequence[tuple[str, str]]) -> str:
    """A row of captioned images: (caption, relative src)."""
    figs = "".join(
        f'<figure><img src="{escape(src)}" alt="{escape(cap)}">'
        f"<figcaption>{escape(cap)}</figcaption></figure>"
        for cap, src in images
    )
    head = f'<div class="cell" style="width:90px">{escape(title)}</div>'
    return f'<div class="row">{head}{figs}</div>'


def image_grid(images: Sequence[tuple[str, str]]) -> str:
    """A responsive grid of captioned images: (caption, relative src)."""
    cells = "".join(
        f'<div class="cell"><img src="{escape(src)}" alt="{escape(cap)}"><br>{escape(cap)}</div>'
        for cap, src in images
    )
    return f'<div class="grid">{cells}</div>'


def clean(value: object) -> object:
    """JSON-safe copy: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(report: dict) -> str:
    """report.json text (strict JSON, no NaN)."""
    return json.dumps(clean(report), indent=2, allow_nan=False) + "\n"
