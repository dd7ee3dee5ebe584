"""A bench document (document.py) for a person: rich tables and plain lines for the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from toolkit.bench import slo as slo_mod

# Bookkeeping samples: in bench.json, not in the tables.
_HIDDEN = ("tokens", "prompt_tokens", "chunks", "per_token")


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"


_STYLE = {"PASS": "green", "FAIL": "bold red", "INSUFFICIENT": "yellow", "INCONCLUSIVE": "yellow"}


def _bucket(b: list | None, unit: str) -> str:
    if not b:
        return ""
    lo, hi = b
    return f" (bucket {fmt(lo)}-{fmt(hi) if hi is not None else 'inf'})"


def server_cell(srv: dict[str, Any], unit: str) -> str:
    """The server's figure; from a histogram's edge bucket only the bound it gives."""
    lo, hi = srv["bucket"]
    if srv["value"] is None:
        bound = f"<= {fmt(hi, unit)}" if lo == 0 else f">= {fmt(lo, unit)}"
        return f"{bound} ({srv['samples']})"
    return f"{fmt(srv['value'], unit)}{_bucket(srv['bucket'], unit)} ({srv['samples']})"


def slo_table(doc: dict[str, Any]) -> Table:
    t = Table(title="SLOs (seed): client view beside vLLM's histogram", title_justify="left")
    for col in ("SLO", "objective", "conc.", "client (n)", "server (n)", "judged on", "result"):
        t.add_column(col, justify="right" if col in ("conc.",) else "left", overflow="fold")
    for v in doc["slos"]:
        c, srv = v["client"], v["server"]
        client = f"{fmt(c['value'], v['unit'])} ({c['samples']})" if c else "-"
        server = "-"
        if srv:
            server = server_cell(srv, v["unit"])
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
                f"{fmt(v['client']['value'], v['unit'])} lies outside the server's bucket "
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
                fmt(s["p50"]),
                fmt(s["p95"]),
                fmt(s["p99"]),
                fmt(m["requests_per_s"]),
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
            f"prefix cache at concurrency {c}: TTFT p50 first turn {fmt(first['metrics']['ttft_ms']['p50'], 'ms')} "
            f"({fmt(p1)} prompt tokens), second turn {fmt(second['metrics']['ttft_ms']['p50'], 'ms')} "
            f"({fmt(p2)} prompt tokens); server prefix-cache hit rate on the second turns "
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
            f"{fmt(tt['mean_ms'])} / {fmt(tt['p50_ms'])} / {fmt(tt['p95_ms'])}",
            fmt(v["decode_tokens_per_s"]),
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
