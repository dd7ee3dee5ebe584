"""A bench document (document.py) as a self-contained HTML page: inline SVG ECDFs, no script and no
external resource.
"""

from __future__ import annotations

import html
import math
from typing import Any

from toolkit.bench.document import UNITS, overall
from toolkit.bench.tables import fmt, measured_lines, notes, server_cell

# What the plot shows, in order: (metric key, title).
PLOTTED = (
    ("autocomplete.latency_ms", "Autocomplete latency"),
    ("chat.ttft_ms", "Chat time to first token (first turn, a code context)"),
    ("chat_followup.ttft_ms", "Chat time to first token (second turn: the prefix is cached)"),
    ("chat.decode_tps", "Chat decode speed"),
    ("embed.latency_ms", "Embedding latency (one input)"),
    ("search.latency_ms", "Codebase search latency (embed query + LanceDB top-k)"),
)
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_W, _H, _L, _R, _T, _B = 640, 300, 60, 20, 20, 40


def _ticks(hi: float, n: int = 5) -> list[float]:
    if hi <= 0:
        return [0.0]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(hi / step) + 1)]


def _ecdf_svg(series: list[tuple[str, list[float]]], unit: str, threshold: float | None, label: str) -> str:
    """Empirical CDF, one line per concurrency level: the share of requests at or below x."""
    hi = max([max(v) for _, v in series if v] + ([threshold] if threshold else []) + [1e-9]) * 1.05
    ticks = _ticks(hi)
    hi = max(hi, ticks[-1])
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(v: float) -> float:
        return _L + pw * v / hi

    def y(f: float) -> float:
        return _T + ph * (1 - f)

    parts = [
        f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(label)}">',
        f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>',
    ]
    for t in ticks:
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{_T + ph}" x2="{x(t):.1f}" y2="{_T + ph + 4}" stroke="#555"/>'
            f'<text x="{x(t):.1f}" y="{_T + ph + 16}" font-size="11" text-anchor="middle">{t:g}</text>'
        )
    for f in (0, 0.5, 0.95):
        parts.append(
            f'<line x1="{_L}" y1="{y(f):.1f}" x2="{_L + pw}" y2="{y(f):.1f}" stroke="#ddd"/>'
            f'<text x="{_L - 6}" y="{y(f) + 4:.1f}" font-size="11" text-anchor="end">{f:g}</text>'
        )
    parts.append(f'<text x="{_L + pw / 2}" y="{_H - 4}" font-size="12" text-anchor="middle">{html.escape(unit)}</text>')
    if threshold is not None:
        tx = x(threshold)
        # The label goes on whichever side of the line has room.
        lx, anchor = (tx - 4, "end") if tx > _L + pw * 0.8 else (tx + 4, "start")
        parts.append(
            f'<line class="slo" x1="{tx:.1f}" y1="{_T}" x2="{tx:.1f}" y2="{_T + ph}" stroke="#000" '
            f'stroke-dasharray="6 4"/><text x="{lx:.1f}" y="{_T + 12}" font-size="11" text-anchor="{anchor}">'
            f"SLO {threshold:g}</text>"
        )
    legend_y = _T + ph - 8 - 16 * len(series)
    for i, (name, values) in enumerate(series):
        vs = sorted(values)
        pts = [(x(0), y(0))]
        for k, v in enumerate(vs):
            pts += [(x(v), y(k / len(vs))), (x(v), y((k + 1) / len(vs)))]
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(
            f'<polyline class="ecdf" fill="none" stroke="{colour}" stroke-width="2" points="'
            + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            + '"/>'
        )
        parts.append(
            f'<rect x="{_L + pw - 150}" y="{legend_y + 16 * i}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_L + pw - 136}" y="{legend_y + 9 + 16 * i}" font-size="11">{html.escape(name)} '
            f"(n={len(vs)})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def plot_html(doc: dict[str, Any]) -> str:
    """One self-contained HTML page: an ECDF per measured metric, the SLO as a dashed line."""
    thresholds = {s["metric"]: s["threshold"] for s in doc["slos"]}
    sections = []
    for key, title in PLOTTED:
        workload, metric = key.split(".")
        series = [
            (f"concurrency {m['concurrency']}", m["metrics"][metric]["values"])
            for m in doc["measurements"]
            if m["workload"] == workload and metric in m["metrics"]
        ]
        if not series:
            continue
        verdict = [s for s in doc["slos"] if s["metric"] == key]
        tag = ""
        if verdict:
            st = overall(verdict)
            tag = f' <span class="{st.lower()}">{st}</span>'
            if any(v["source"] == "server" for v in verdict):
                tag += " (judged on the server's histogram: the stream was not per token)"
        sections.append(
            f"<section><h2>{html.escape(title)}{tag}</h2>"
            + _ecdf_svg(series, UNITS.get(metric, ""), thresholds.get(key), title)
            + "</section>"
        )
    rows = "".join(
        f"<tr><td>{html.escape(v['name'])}</td><td>{html.escape(v['stat'])} {html.escape(v['op'])} "
        f"{v['threshold']:g} {html.escape(v['unit'])}</td><td>{v['concurrency']}</td>"
        f"<td>{fmt((v['client'] or {}).get('value'), v['unit'])} ({(v['client'] or {}).get('samples', 0)})</td>"
        f"<td>{html.escape(server_cell(v['server'], v['unit']) if v['server'] else '-')}"
        f"{' disagrees' if v['disagree'] else ''}</td><td>{html.escape(v['source'])}</td>"
        f'<td class="{v["status"].lower()}">{v["status"]}</td></tr>'
        for v in doc["slos"]
    )
    what = "".join(f"<li>{html.escape(line)}</li>" for line in measured_lines(doc) + notes(doc))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>toolkit bench {html.escape(doc['started_at'])}</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.pass{color:#080;font-weight:bold}"
        ".fail{color:#c00;font-weight:bold}.insufficient,.inconclusive{color:#b60;font-weight:bold}"
        "section{margin:1.5em 0}</style></head><body>"
        f"<h1>toolkit bench, {html.escape(doc['started_at'])}</h1>"
        "<p>Each chart is an empirical CDF: for a latency, the share of requests that finished within x "
        "(further left is better); for decode speed, the share at or below x tokens/s (further right is "
        "better). The dashed line is the SLO.</p>"
        f"<ul>{what}</ul>"
        "<table><tr><th>SLO</th><th>objective</th><th>concurrency</th><th>client (n)</th><th>server (n)</th>"
        f"<th>judged on</th><th>result</th></tr>{rows}</table>" + "".join(sections) + "</body></html>\n"
    )
