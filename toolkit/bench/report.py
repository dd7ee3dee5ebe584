"""Renders a BenchResult: the SLO verdicts, rich tables, a JSON document and an HTML plot.

``build`` turns the run into one plain dict (the JSON document, schema ``REPORT_SCHEMA``); the
tables and the plot are drawn from that dict, so what a person reads and what a machine reads
never disagree.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from toolkit.bench import slo as slo_mod
from toolkit.bench import stats
from toolkit.bench.runner import BenchResult

SCHEMA_VERSION = 1
UNITS = {"latency_ms": "ms", "ttft_ms": "ms", "decode_tps": "tokens/s", "tokens": "tokens"}
# What the plot shows, in order: (metric key, title).
PLOTTED = (
    ("autocomplete.latency_ms", "Autocomplete latency"),
    ("chat.ttft_ms", "Chat time to first token"),
    ("chat.decode_tps", "Chat decode speed"),
    ("embed.latency_ms", "Embedding latency (one input)"),
    ("search.latency_ms", "Codebase search latency (embed query + LanceDB top-k)"),
)

_NUM = {"type": "number"}
_SUMMARY = {
    "type": "object",
    "required": ["unit", "n", "mean", "min", "max", "p5", "p50", "p95", "p99", "values"],
    "properties": {
        "unit": {"type": "string"},
        "n": {"type": "integer", "minimum": 1},
        **{k: _NUM for k in ("mean", "min", "max", "p5", "p50", "p95", "p99")},
        "values": {"type": "array", "items": _NUM, "minItems": 1},
    },
}
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "toolkit bench report",
    "type": "object",
    "required": [
        "schema",
        "started_at",
        "passed",
        "settings",
        "endpoints",
        "measurements",
        "slos",
        "servers",
        "search",
    ],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "started_at": {"type": "string"},
        "passed": {"type": "boolean"},
        "settings": {
            "type": "object",
            "required": [
                "concurrency",
                "requests",
                "warmup",
                "autocomplete_max_tokens",
                "chat_max_tokens",
                "top_k",
                "code_tree",
            ],
            "properties": {"concurrency": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1}},
        },
        "endpoints": {
            "type": "object",
            "required": ["chat", "autocomplete", "embed"],
            "additionalProperties": {
                "type": "object",
                "required": ["url", "model"],
                "properties": {"url": {"type": "string"}, "model": {"type": "string"}},
            },
        },
        "measurements": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["workload", "concurrency", "requests", "wall_s", "requests_per_s", "metrics"],
                "properties": {
                    "workload": {"enum": ["autocomplete", "chat", "embed", "search"]},
                    "concurrency": {"type": "integer", "minimum": 1},
                    "requests": {"type": "integer", "minimum": 1},
                    "wall_s": _NUM,
                    "requests_per_s": _NUM,
                    "metrics": {"type": "object", "additionalProperties": _SUMMARY},
                },
            },
        },
        "slos": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "metric",
                    "stat",
                    "op",
                    "threshold",
                    "unit",
                    "concurrency",
                    "measured",
                    "samples",
                    "passed",
                ],
                "properties": {
                    "measured": {"type": ["number", "null"]},
                    "samples": {"type": "integer", "minimum": 0},
                    "passed": {"type": "boolean"},
                    "op": {"enum": ["<", "<=", ">", ">="]},
                },
            },
        },
        "servers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["url", "roles", "client", "server"],
                "properties": {
                    "client": {"type": "object", "required": ["requests", "generation_tokens"]},
                    "server": {
                        "type": ["object", "null"],
                        "required": ["requests", "generation_tokens", "decode_tokens_per_s", "ttft"],
                        "properties": {
                            "ttft": {"type": "object", "required": ["count", "mean_ms", "p50_ms", "p95_ms"]}
                        },
                    },
                },
            },
        },
        "search": {
            "type": "object",
            "required": ["tree", "files", "chunks", "dimensions", "index_s", "top_k", "query", "hits"],
            "properties": {
                "hits": {
                    "type": "array",
                    "items": {"type": "object", "required": ["path", "start_line", "end_line", "distance"]},
                }
            },
        },
    },
}


def _summaries(result: BenchResult) -> dict[tuple[str, int], stats.Summary | None]:
    out = {}
    for m in result.measurements:
        for metric, values in m.values.items():
            out[(f"{m.workload}.{metric}", m.concurrency)] = stats.summarize(values)
    return out


def verdicts(result: BenchResult) -> list[slo_mod.Verdict]:
    return slo_mod.evaluate(_summaries(result), result.settings.concurrency)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def build(result: BenchResult) -> dict[str, Any]:
    """The JSON document of a run."""
    s = result.settings
    vs = verdicts(result)
    measurements = []
    for m in result.measurements:
        metrics = {}
        for name, values in m.values.items():
            summary = stats.summarize(values)
            if summary:
                metrics[name] = {"unit": UNITS.get(name, ""), **summary.as_dict(), "values": values}
        measurements.append(
            {
                "workload": m.workload,
                "concurrency": m.concurrency,
                "requests": m.requests,
                "wall_s": m.wall_s,
                "requests_per_s": m.requests / m.wall_s if m.wall_s > 0 else 0.0,
                "metrics": metrics,
            }
        )
    servers = []
    for srv in result.servers:
        view = None
        if srv.server is not None:
            h = srv.server.ttft
            view = {
                "requests": srv.server.requests,
                "generation_tokens": srv.server.generation_tokens,
                "decode_tokens_per_s": srv.server.decode_tokens_per_s,
                "ttft": {
                    "count": h.count,
                    "mean_ms": _ms(h.sum / h.count) if h.count else None,
                    "p50_ms": _ms(h.quantile(0.5)),
                    "p95_ms": _ms(h.quantile(0.95)),
                },
            }
        servers.append(
            {
                "url": srv.root,
                "roles": srv.roles,
                "client": {"requests": srv.client_requests, "generation_tokens": srv.client_generation_tokens},
                "server": view,
            }
        )
    search = None
    if result.search:
        si = result.search
        search = {
            "tree": si.tree,
            "files": si.files,
            "chunks": si.chunks,
            "dimensions": si.dimensions,
            "index_s": si.index_s,
            "top_k": si.top_k,
            "query": si.query,
            "hits": [
                {"path": h.path, "start_line": h.start_line, "end_line": h.end_line, "distance": h.distance}
                for h in si.hits
            ],
        }
    return {
        "schema": SCHEMA_VERSION,
        "started_at": result.started_at,
        "passed": slo_mod.all_passed(vs),
        "settings": {
            "concurrency": list(s.concurrency),
            "requests": s.requests,
            "warmup": s.warmup,
            "autocomplete_max_tokens": s.autocomplete_max_tokens,
            "chat_max_tokens": s.chat_max_tokens,
            "top_k": s.top_k,
            "code_tree": search["tree"] if search else None,
        },
        "endpoints": {role: {"url": root, "model": model} for role, (root, model) in result.models.items()},
        "measurements": measurements,
        "slos": [
            {
                "name": v.slo.name,
                "metric": v.slo.metric,
                "stat": v.slo.stat,
                "op": v.slo.op,
                "threshold": v.slo.threshold,
                "unit": v.slo.unit,
                "concurrency": v.concurrency,
                "measured": v.measured,
                "samples": v.samples,
                "passed": v.passed,
            }
            for v in vs
        ],
        "servers": servers,
        "search": search,
    }


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"


def slo_table(doc: dict[str, Any]) -> Table:
    t = Table(title="SLOs (seed)", title_justify="left")
    for col in ("SLO", "objective", "concurrency", "measured", "samples", "result"):
        t.add_column(col, justify="right" if col in ("concurrency", "measured", "samples") else "left")
    for v in doc["slos"]:
        result = "[green]PASS[/green]" if v["passed"] else "[bold red]FAIL[/bold red]"
        t.add_row(
            v["name"],
            f"{v['stat']} {v['op']} {v['threshold']:g} {v['unit']}",
            str(v["concurrency"]),
            _fmt(v["measured"], v["unit"]),
            str(v["samples"]),
            result,
        )
    return t


def measurements_table(doc: dict[str, Any]) -> Table:
    t = Table(title="Client-side measurements", title_justify="left")
    for col in ("workload", "conc.", "metric", "n", "p50", "p95", "p99", "req/s"):
        t.add_column(col, justify="left" if col in ("workload", "metric") else "right")
    for m in doc["measurements"]:
        for name, s in m["metrics"].items():
            if name == "tokens":
                continue
            t.add_row(
                m["workload"],
                str(m["concurrency"]),
                f"{name} ({s['unit']})",
                str(s["n"]),
                _fmt(s["p50"]),
                _fmt(s["p95"]),
                _fmt(s["p99"]),
                _fmt(m["requests_per_s"]),
            )
    return t


def servers_table(doc: dict[str, Any]) -> Table:
    t = Table(title="What the client sent vs what the server counted (/metrics deltas)", title_justify="left")
    for col in ("server", "serves", "requests", "gen. tokens", "server TTFT ms", "server decode"):
        t.add_column(col, overflow="fold")
    t.add_row("", "", "client / server", "client / server", "mean / p50 / p95", "tokens/s", style="dim")
    for s in doc["servers"]:
        c, v = s["client"], s["server"]
        if v is None:
            t.add_row(s["url"], ", ".join(s["roles"]), f"{c['requests']} / -", f"{c['generation_tokens']} / -",
                      "no vLLM /metrics", "-")  # fmt: skip
            continue
        tt = v["ttft"]
        t.add_row(
            s["url"],
            ", ".join(s["roles"]),
            f"{c['requests']} / {v['requests']:g}",
            f"{c['generation_tokens']} / {v['generation_tokens']:g}",
            f"{_fmt(tt['mean_ms'])} / {_fmt(tt['p50_ms'])} / {_fmt(tt['p95_ms'])}",
            _fmt(v["decode_tokens_per_s"]),
        )
    return t


def search_lines(doc: dict[str, Any]) -> list[str]:
    s = doc["search"]
    if not s:
        return []
    lines = [
        f"Search index: {s['files']} files, {s['chunks']} chunks, {s['dimensions']} dims from {s['tree']} "
        f"in {s['index_s']:.1f} s (LanceDB)",
        f"Top {s['top_k']} for {s['query']!r}:",
    ]
    lines += [f"  {h['path']}:{h['start_line']}-{h['end_line']}  (distance {h['distance']:.3f})" for h in s["hits"]]
    return lines


# --- the plot: self-contained HTML, inline SVG, no script and no external resource ---------------

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
            ok = all(v["passed"] for v in verdict)
            tag = f' <span class="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span>'
        sections.append(
            f"<section><h2>{html.escape(title)}{tag}</h2>"
            + _ecdf_svg(series, UNITS.get(metric, ""), thresholds.get(key), title)
            + "</section>"
        )
    rows = "".join(
        f"<tr><td>{html.escape(v['name'])}</td><td>{html.escape(v['stat'])} {html.escape(v['op'])} "
        f"{v['threshold']:g} {html.escape(v['unit'])}</td><td>{v['concurrency']}</td>"
        f"<td>{_fmt(v['measured'], v['unit'])}</td><td>{v['samples']}</td>"
        f'<td class="{"pass" if v["passed"] else "fail"}">{"PASS" if v["passed"] else "FAIL"}</td></tr>'
        for v in doc["slos"]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>toolkit bench {html.escape(doc['started_at'])}</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.pass{color:#080;font-weight:bold}"
        ".fail{color:#c00;font-weight:bold}section{margin:1.5em 0}</style></head><body>"
        f"<h1>toolkit bench, {html.escape(doc['started_at'])}</h1>"
        "<p>Each chart is an empirical CDF: for a latency, the share of requests that finished within x "
        "(further left is better); for decode speed, the share at or below x tokens/s (further right is "
        "better). The dashed line is the SLO.</p>"
        "<table><tr><th>SLO</th><th>objective</th><th>concurrency</th><th>measured</th><th>samples</th>"
        f"<th>result</th></tr>{rows}</table>" + "".join(sections) + "</body></html>\n"
    )
