"""Runs the bench: preflight, warm-up, every workload at every concurrency level, /metrics around it.

Order matters for honest numbers: the search index is built and every workload warmed up before
the first /metrics scrape, so the server-side deltas cover exactly the measured requests.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from toolkit.bench import metrics, search, workloads
from toolkit.bench.client import Api, Resolved, Tally, resolve
from toolkit.bench.endpoints import Endpoints
from toolkit.bench.metrics import ServerView

# Called as progress(label, total) before a phase; returns the function to call after each step.
Progress = Callable[[str, int], Callable[[], None]]

WORKLOADS = ("autocomplete", "chat", "embed", "search")


def no_progress(label: str, total: int) -> Callable[[], None]:
    return lambda: None


@dataclass(frozen=True)
class Settings:
    concurrency: tuple[int, ...] = (1, 4)
    requests: int = 20
    warmup: int = 2  # rounds: warmup x c unmeasured requests at each level c
    autocomplete_max_tokens: int = workloads.AUTOCOMPLETE_MAX_TOKENS
    chat_max_tokens: int = workloads.CHAT_MAX_TOKENS
    top_k: int = workloads.SEARCH_TOP_K
    code_tree: Path | None = None
    timeout_s: float = 120.0


@dataclass
class Measurement:
    """Every sample of one workload at one concurrency level; values per metric name."""

    workload: str
    concurrency: int
    values: dict[str, list[float]]
    requests: int
    wall_s: float


@dataclass
class ServerReport:
    """One server: what the client sent and what the server's /metrics counted meanwhile."""

    root: str
    roles: list[str]
    client_requests: int
    client_generation_tokens: int
    server: ServerView | None  # None: the server publishes no vLLM metrics (e.g. Ollama)


@dataclass
class SearchInfo:
    tree: str
    files: int
    chunks: int
    dimensions: int
    index_s: float
    top_k: int
    query: str
    hits: list[search.Hit]


@dataclass
class BenchResult:
    started_at: str
    settings: Settings
    models: dict[str, tuple[str, str]]  # role -> (root, model)
    measurements: list[Measurement] = field(default_factory=list)
    servers: list[ServerReport] = field(default_factory=list)
    search: SearchInfo | None = None


async def run_level(
    fn: Callable[[int], Awaitable[dict[str, float]]], n: int, concurrency: int, step: Callable[[], None]
) -> tuple[dict[str, list[float]], float]:
    """``n`` requests with ``concurrency`` in flight at once; request i is ``fn(i)``."""
    values: dict[str, list[float]] = {}
    next_i = iter(range(n))

    async def worker() -> None:
        for i in next_i:  # a shared iterator: each index is taken by exactly one worker
            sample = await fn(i)
            for k, v in sample.items():
                values.setdefault(k, []).append(v)
            step()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return values, time.perf_counter() - start


def _request_fns(
    api: Api, res: dict[str, Resolved], s: Settings, index: search.Index
) -> dict[str, Callable[[int], Awaitable[dict[str, float]]]]:
    async def autocomplete(i: int) -> dict[str, float]:
        return await api.complete(
            res["autocomplete"], workloads.pick(workloads.AUTOCOMPLETE_PREFIXES, i), s.autocomplete_max_tokens
        )

    async def chat(i: int) -> dict[str, float]:
        return await api.chat(res["chat"], workloads.pick(workloads.CHAT_PROMPTS, i), s.chat_max_tokens)

    async def embed(i: int) -> dict[str, float]:
        _, elapsed = await api.embed(res["embed"], [workloads.pick(workloads.EMBED_INPUTS, i)])
        return {"latency_ms": elapsed * 1000.0}

    async def search_q(i: int) -> dict[str, float]:
        _, elapsed = await search.query(api, res["embed"], index, workloads.pick(workloads.SEARCH_QUERIES, i), s.top_k)
        return {"latency_ms": elapsed * 1000.0}

    return {"autocomplete": autocomplete, "chat": chat, "embed": embed, "search": search_q}


def _scrape_all(client: httpx.Client, roots: list[str]) -> dict[str, list[metrics.MetricSample] | None]:
    return {root: metrics.scrape(client, root) for root in roots}


async def _run(endpoints: Endpoints, api_key: str | None, s: Settings, progress: Progress, db_dir: Path) -> BenchResult:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    timeout = httpx.Timeout(s.timeout_s, connect=5.0)
    with httpx.Client(timeout=timeout) as sync_client:
        res = resolve(sync_client, endpoints, api_key)
        roots = list(dict.fromkeys(ep.root for ep in endpoints.all()))
        result = BenchResult(started, s, {role: (r.endpoint.root, r.model) for role, r in res.items()})
        limits = httpx.Limits(max_connections=max(s.concurrency) + 4)
        tally = Tally()
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as aclient:
            api = Api(aclient, api_key, tally)

            tree = (s.code_tree or search.default_tree()).resolve()
            bar: list[Callable[[], None]] = []

            def on_batch(done: int, total: int) -> None:
                if not bar:
                    bar.append(
                        progress(f"indexing {tree.name} into LanceDB", (total + search.BATCH - 1) // search.BATCH)
                    )
                bar[0]()

            index = await search.build(api, res["embed"], tree, db_dir, on_batch)
            fns = _request_fns(api, res, s, index)

            # Warm-up rounds at every level: a batch size the server has not seen yet can stall
            # (CPU builds compile kernels per shape), and that stall is not what users live with.
            step = progress("warm-up", s.warmup * sum(s.concurrency) * len(WORKLOADS))
            for name in WORKLOADS:
                for c in s.concurrency:
                    await run_level(fns[name], s.warmup * c, c, step)

            before = await asyncio.to_thread(_scrape_all, sync_client, roots)
            tally.reset()
            for name in WORKLOADS:
                for c in s.concurrency:
                    step = progress(f"{name} x{c}", s.requests)
                    values, wall = await run_level(fns[name], s.requests, c, step)
                    result.measurements.append(Measurement(name, c, values, s.requests, wall))
            after = await asyncio.to_thread(_scrape_all, sync_client, roots)
            sent_requests, sent_tokens = dict(tally.requests), dict(tally.generation_tokens)

            probe = workloads.SEARCH_QUERIES[0]
            hits, _ = await search.query(api, res["embed"], index, probe, s.top_k)
            result.search = SearchInfo(
                str(tree), index.files, index.chunks, index.dimensions, index.index_s, s.top_k, probe, hits
            )

    for root in roots:
        b, a = before[root], after[root]
        result.servers.append(
            ServerReport(
                root,
                [role for role, r in res.items() if r.endpoint.root == root],
                sent_requests.get(root, 0),
                sent_tokens.get(root, 0),
                metrics.view(b, a) if b is not None and a is not None else None,
            )
        )
    return result


def run(endpoints: Endpoints, api_key: str | None, settings: Settings, progress: Progress = no_progress) -> BenchResult:
    """Measure every workload; raises EnvironmentProblem when an endpoint is down or answers wrongly."""
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-lancedb-") as db_dir:
        return asyncio.run(_run(endpoints, api_key, settings, progress, Path(db_dir)))
