"""A bench run as one JSON document: the SLO verdicts, the measurements and the servers' own figures.

``build`` turns a BenchResult into one plain dict, described by toolkit/data/bench_report.schema.json
(``REPORT_SCHEMA``); the tables (tables.py) and the plot (plot.py) are drawn from that dict, so what a
person reads and what a machine reads never disagree.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

from toolkit.bench import slo as slo_mod
from toolkit.bench import stats
from toolkit.bench.runner import BenchResult

REPORT_SCHEMA: dict[str, Any] = json.loads(
    (resources.files("toolkit") / "data" / "bench_report.schema.json").read_text()
)
# The document's version: the schema file is its one home.
SCHEMA_VERSION = REPORT_SCHEMA["properties"]["schema"]["const"]

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
        "verdict": overall(vs),
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


def overall(vs: list[dict[str, Any]]) -> str:
    statuses = [v["status"] for v in vs]
    if slo_mod.FAIL in statuses:
        return slo_mod.FAIL
    return slo_mod.PASS if statuses and all(x == slo_mod.PASS for x in statuses) else slo_mod.INCONCLUSIVE


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"
