"""Renders a BenchResult: the SLO verdicts, rich tables, a JSON document and an HTML plot.

``build`` turns the run into one plain dict (the JSON document, schema ``REPORT_SCHEMA``); the
tables and the plot are drawn from that dict, so what a person reads and what a machine reads
never disagree.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from rich.table import Table

from toolkit.bench import slo as slo_mod
from toolkit.bench import stats
from toolkit.bench.runner import BenchResult

SCHEMA_VERSION = 2
UNITS = {
    "latency_ms": "ms",
    "ttft_ms": "ms",
    "decode_tps": "tokens/s",
    "tokens": "tokens",
    "prompt_tokens": "tokens",
    "chunks": "chunks",
    "per_token": "share",
    "max_gap_ms": "ms",
}
# Bookkeeping samples: in bench.json, not in the tables.
_HIDDEN = ("tokens", "prompt_tokens", "chunks", "per_token")
# What the plot shows, in order: (metric key, title).
PLOTTED = (
    ("autocomplete.latency_ms", "Autocomplete latency"),
    ("chat.ttft_ms", "Chat time to first token (first turn, a code context)"),
    ("chat_followup.ttft_ms", "Chat time to first token (second turn: the prefix is cached)"),
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
        "verdict",
        "measured",
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
        "verdict": {"enum": ["PASS", "FAIL", "INCONCLUSIVE"]},
        "measured": {"type": "object", "required": ["roles", "servers", "device", "fim"]},
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
                    "workload": {"enum": ["autocomplete", "chat", "chat_followup", "embed", "search"]},
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
                    "min_samples",
                    "status",
                    "passed",
                    "source",
                    "client",
                    "server",
                    "disagree",
                ],
                "properties": {
                    "measured": {"type": ["number", "null"]},
                    "samples": {"type": "integer", "minimum": 0},
                    "status": {"enum": ["PASS", "FAIL", "INSUFFICIENT", "INCONCLUSIVE"]},
                    "passed": {"type": "boolean"},
                    "source": {"enum": ["client", "server"]},
                    "disagree": {"type": "boolean"},
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


# Which server histogram stands beside each SLO's client figure (vLLM names in metrics.py).
SERVER_SIDE = {
    "autocomplete.latency_ms": ("e2e", "vllm:e2e_request_latency_seconds"),
    "chat.ttft_ms": ("ttft", "vllm:time_to_first_token_seconds"),
    "chat.decode_tps": ("tpot", "vllm:request_time_per_output_token_seconds"),
    "search.latency_ms": ("e2e", "vllm:e2e_request_latency_seconds (the query's embedding only)"),
}
# SLOs whose server figure covers only part of what the client timed (search: the embedding, not
# LanceDB): the client may be slower than the server without disagreeing.
PART_ONLY = frozenset(["search.latency_ms"])


def _summaries(result: BenchResult) -> dict[tuple[str, int], stats.Summary | None]:
    out = {}
    for m in result.measurements:
        for metric, values in m.values.items():
            out[(f"{m.workload}.{metric}", m.concurrency)] = stats.summarize(values)
    return out


def _measurement(result: BenchResult, workload: str, c: int):
    return next((m for m in result.measurements if m.workload == workload and m.concurrency == c), None)


def _server_figure(slo: slo_mod.Slo, view) -> dict[str, Any] | None:
    """The server's figure for the SLO's statistic: interpolated value, its bucket, the count."""
    if view is None:
        return None
    attr, name = SERVER_SIDE[slo.metric]
    hist = getattr(view, attr)
    if hist.count <= 0:
        return None
    if attr == "tpot":
        q = 1.0 - slo.quantile  # p5 of a rate is the p95 of its time per token
        lo, hi = hist.bounds(q)
        value = hist.quantile(q)
        return {
            "metric": name,
            "samples": int(hist.count),
            "value": 1.0 / value if value and lo > 0 else None,
            "bucket": [1.0 / hi if not math.isinf(hi) else 0.0, None if lo <= 0 else 1.0 / lo],
            "mean": (view.generation_tokens - view.requests) / view.decode_s if view.decode_s > 0 else None,
        }
    lo, hi = hist.bounds(slo.quantile)
    return {
        "metric": name,
        "samples": int(hist.count),
        # In the lowest bucket (0, le] a histogram only says "at most le": no interpolated figure.
        "value": _ms(hist.quantile(slo.quantile)) if lo > 0 else None,
        "bucket": [lo * 1000.0, None if math.isinf(hi) else hi * 1000.0],
        "mean": _ms(hist.sum / hist.count),
    }


def verdicts(result: BenchResult) -> list[dict[str, Any]]:
    """Every SLO at every level: the verdict, the client's figure beside the server's, a warning
    when they disagree."""
    summaries = _summaries(result)
    out = []
    for slo in slo_mod.SEED_SLOS:
        workload, metric = slo.metric.split(".")
        for c in result.settings.concurrency:
            m = _measurement(result, workload, c)
            view = m.server if m else None
            summary = summaries.get((slo.metric, c))
            client = {"value": summary.get(slo.stat), "samples": summary.n} if summary else None
            server = _server_figure(slo, view)
            if metric == "decode_tps":
                per_token = m.values.get("per_token", []) if m else []
                if per_token and all(p == 1.0 for p in per_token) and summary:
                    v = slo_mod.judge(slo, summary, c)
                else:
                    bursts = [k for k, p in enumerate(per_token) if p != 1.0]
                    tokens = sum(m.values["tokens"][k] for k in bursts) if m and m.values.get("tokens") else 0
                    chunks = sum(m.values["chunks"][k] for k in bursts) if m and m.values.get("chunks") else 0
                    why = (f"{len(bursts)} of {len(per_token)} streams not per token ({tokens:g} tokens in "
                           f"{chunks:g} chunks): decode speed from the server's per-request TPOT "
                           "histogram")  # fmt: skip
                    client = None
                    if view is None:
                        v = slo_mod.Verdict(slo, c, None, 0, slo_mod.INCONCLUSIVE, "server",
                                            why.split(":")[0] + " and no vLLM /metrics to read it from")  # fmt: skip
                    else:
                        v = slo_mod.judge_rate_from_seconds(slo, view.tpot, c, why)
            else:
                v = slo_mod.judge(slo, summary, c)
            bucket = tuple(server["bucket"]) if server else None
            warn = bool(client and server and slo_mod.disagreement(client["value"], bucket))
            if warn and slo.metric in PART_ONLY and bucket and client["value"] >= bucket[0]:
                warn = False
            out.append(
                {
                    "name": slo.name,
                    "metric": slo.metric,
                    "stat": slo.stat,
                    "op": slo.op,
                    "threshold": slo.threshold,
                    "unit": slo.unit,
                    "concurrency": c,
                    "min_samples": slo.min_samples,
                    "measured": v.measured,
                    "samples": v.samples,
                    "status": v.status,
                    "passed": v.passed,
                    "source": v.source,
                    "note": v.note,
                    "client": client,
                    "server": server,
                    "disagree": warn,
                }
            )
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _view_dict(v) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "requests": v.requests,
        "generation_tokens": v.generation_tokens,
        "prompt_tokens": v.prompt_tokens,
        "decode_tokens_per_s": v.decode_tokens_per_s,
        "prefix_cache_hit_rate": v.prefix_hit_rate,
        "ttft": _hist_ms(v.ttft),
        "e2e": _hist_ms(v.e2e),
        "tpot": _hist_ms(v.tpot),
    }


def _hist_ms(h) -> dict[str, Any]:
    d = h.as_dict()
    return {"count": d["count"], "mean_ms": d["mean"], "p50_ms": d["p50"], "p95_ms": d["p95"],
            "p95_bucket_ms": d["p95_bucket"]}  # fmt: skip


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
                "server": _view_dict(m.server),
            }
        )
    servers = []
    for srv in result.servers:
        view = None
        if srv.server is not None:
            view = _view_dict(srv.server)
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
        "passed": all(v["passed"] for v in vs) and bool(vs),
        "verdict": _overall(vs),
        "measured": result.measured,
        "settings": {
            "concurrency": list(s.concurrency),
            "requests": s.requests,
            "warmup": s.warmup,
            "autocomplete_max_tokens": s.autocomplete_max_tokens,
            "chat_max_tokens": s.chat_max_tokens,
            "chat_context_chars": s.chat_context_chars,
            "top_k": s.top_k,
            "code_tree": search["tree"] if search else None,
        },
        "endpoints": {role: {"url": root, "model": model} for role, (root, model) in result.models.items()},
        "measurements": measurements,
        "slos": vs,
        "servers": servers,
        "search": search,
    }


def _overall(vs: list[dict[str, Any]]) -> str:
    statuses = [v["status"] for v in vs]
    if slo_mod.FAIL in statuses:
        return slo_mod.FAIL
    return slo_mod.PASS if statuses and all(x == slo_mod.PASS for x in statuses) else slo_mod.INCONCLUSIVE


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"


_STYLE = {"PASS": "green", "FAIL": "bold red", "INSUFFICIENT": "yellow", "INCONCLUSIVE": "yellow"}


def _bucket(b: list | None, unit: str) -> str:
    if not b:
        return ""
    lo, hi = b
    return f" (bucket {_fmt(lo)}-{_fmt(hi) if hi is not None else 'inf'})"


def _server_cell(srv: dict[str, Any], unit: str) -> str:
    """The server's figure; from a histogram's edge bucket only the bound it gives."""
    lo, hi = srv["bucket"]
    if srv["value"] is None:
        bound = f"<= {_fmt(hi, unit)}" if lo == 0 else f">= {_fmt(lo, unit)}"
        return f"{bound} ({srv['samples']})"
    return f"{_fmt(srv['value'], unit)}{_bucket(srv['bucket'], unit)} ({srv['samples']})"


def slo_table(doc: dict[str, Any]) -> Table:
    t = Table(title="SLOs (seed): client view beside vLLM's histogram", title_justify="left")
    for col in ("SLO", "objective", "conc.", "client (n)", "server (n)", "judged on", "result"):
        t.add_column(col, justify="right" if col in ("conc.",) else "left", overflow="fold")
    for v in doc["slos"]:
        c, srv = v["client"], v["server"]
        client = f"{_fmt(c['value'], v['unit'])} ({c['samples']})" if c else "-"
        server = "-"
        if srv:
            server = _server_cell(srv, v["unit"])
        if v["disagree"]:
            server += " [bold yellow]disagrees[/bold yellow]"
        style = _STYLE[v["status"]]
        t.add_row(
            v["name"],
            f"{v['stat']} {v['op']} {v['threshold']:g} {v['unit']}",
            str(v["concurrency"]),
            client,
            server,
            v["source"],
            f"[{style}]{v['status']}[/{style}]",
        )
    return t


def notes(doc: dict[str, Any]) -> list[str]:
    """What the table cannot say in a cell: why a verdict is not PASS/FAIL, disagreements, what ran."""
    out = []
    for v in doc["slos"]:
        if v["note"]:
            out.append(f"{v['name']} at concurrency {v['concurrency']}: {v['note']}")
        if v["disagree"]:
            out.append(
                f"warning: {v['name']} at concurrency {v['concurrency']}: the client's "
                f"{_fmt(v['client']['value'], v['unit'])} lies outside the server's bucket "
                f"{_bucket(v['server']['bucket'], v['unit']).strip()} by more than "
                f"{slo_mod.DISAGREE_MARGIN:.0%}"
            )
    short = [v for v in doc["slos"] if v["status"] == slo_mod.INSUFFICIENT]
    if short:
        out.append(
            f"{doc['settings']['requests']} requests per level are too few to judge a p95/p5 "
            f"(needs {max(v['min_samples'] for v in short)}): those SLOs are INSUFFICIENT, not PASS"
        )
    return out


def measured_lines(doc: dict[str, Any]) -> list[str]:
    m = doc.get("measured") or {}
    dev = m.get("device") or {}
    gpus = ", ".join(g.get("name") or "?" for g in dev.get("gpus") or [])
    lines = [f"Device (toolkit detect): {gpus or 'CPU only'}{' - ' + dev['cpu'] if dev.get('cpu') else ''}"]
    for role, r in (m.get("roles") or {}).items():
        extra = ", ".join(
            f"{k.removeprefix('plan_')} {r[k]}" for k in ("plan_revision", "plan_quantization_label") if r.get(k)
        )
        lines.append(f"{role}: {r.get('plan_model') or r.get('weights') or r['served_as']} served as "
                     f"{r['served_as']} at {r['url']} ({m.get('servers', {}).get(r['url']) or 'version unknown'}"
                     f"{', ' + extra if extra else ''})")  # fmt: skip
    fim = m.get("fim") or {}
    prompt = "plain prefix (no family)"
    if fim.get("family"):
        prompt = f"FIM of {fim['family']}, {len(fim.get('stop_sent', []))} of {len(fim['stop'])} stop strings"
    lines.append(f"autocomplete prompt: {prompt}")
    return lines


def measurements_table(doc: dict[str, Any]) -> Table:
    t = Table(title="Client-side measurements", title_justify="left")
    for col in ("workload", "conc.", "metric", "n", "p50", "p95", "p99", "req/s"):
        t.add_column(col, justify="left" if col in ("workload", "metric") else "right")
    for m in doc["measurements"]:
        for name, s in m["metrics"].items():
            if name in _HIDDEN:
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


def prefix_cache_lines(doc: dict[str, Any]) -> list[str]:
    """The second chat turn beside the first: what the prefix cache does to time to first token."""
    by = {(m["workload"], m["concurrency"]): m for m in doc["measurements"]}
    out = []
    for c in doc["settings"]["concurrency"]:
        first, second = by.get(("chat", c)), by.get(("chat_followup", c))
        if not first or not second or "ttft_ms" not in first["metrics"] or "ttft_ms" not in second["metrics"]:
            continue
        hit = (second.get("server") or {}).get("prefix_cache_hit_rate")
        p1 = first["metrics"].get("prompt_tokens", {}).get("p50")
        p2 = second["metrics"].get("prompt_tokens", {}).get("p50")
        out.append(
            f"prefix cache at concurrency {c}: TTFT p50 first turn {_fmt(first['metrics']['ttft_ms']['p50'], 'ms')} "
            f"({_fmt(p1)} prompt tokens), second turn {_fmt(second['metrics']['ttft_ms']['p50'], 'ms')} "
            f"({_fmt(p2)} prompt tokens); server prefix-cache hit rate on the second turns "
            f"{'-' if hit is None else f'{hit:.0%}'}"
        )
    return out


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
            st = _overall(verdict)
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
        f"<td>{_fmt((v['client'] or {}).get('value'), v['unit'])} ({(v['client'] or {}).get('samples', 0)})</td>"
        f"<td>{html.escape(_server_cell(v['server'], v['unit']) if v['server'] else '-')}"
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
