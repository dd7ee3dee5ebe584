"""Runs the bench: preflight, warm-up, every workload at every concurrency level, /metrics around it.

Order matters for honest numbers: the search index is built and every workload warmed up before
the first /metrics scrape, so the server-side deltas cover exactly the measured requests.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import httpx

from toolkit.bench import metrics, search, workloads
from toolkit.bench.client import Api, Resolved, Tally, resolve, server_version
from toolkit.bench.endpoints import Endpoints
from toolkit.bench.metrics import ServerView

# Called as progress(label, total) before a phase; returns the function to call after each step.
Progress = Callable[[str, int], Callable[[], None]]

WORKLOADS = ("autocomplete", "chat", "chat_followup", "embed", "search")
# The server each workload talks to.
ROLE = {"autocomplete": "autocomplete", "chat": "chat", "chat_followup": "chat", "embed": "embed", "search": "embed"}
# vLLM records a request's stats as the engine's outputs are processed, around the time the last
# chunk is sent; a scrape right after the last answer may come a moment early.
SETTLE_S = 3.0


def no_progress(label: str, total: int) -> Callable[[], None]:
    return lambda: None


@dataclass(frozen=True)
class Settings:
    concurrency: tuple[int, ...] = (1, 4)
    requests: int = 100  # per workload and level: enough for a p95 (20) several times over
    warmup: int = 2  # rounds: warmup x c unmeasured requests at each level c
    autocomplete_max_tokens: int = workloads.AUTOCOMPLETE_MAX_TOKENS
    chat_max_tokens: int = workloads.CHAT_MAX_TOKENS
    chat_context_chars: int = workloads.CHAT_CONTEXT_CHARS
    autocomplete_context_chars: int = workloads.PREFIX_CHARS + workloads.SUFFIX_CHARS
    fim: workloads.Fim = workloads.PLAIN
    max_stop_words: int | None = workloads.MAX_STOP_WORDS  # Continue's maxStopWords; None: every stop
    top_k: int = workloads.SEARCH_TOP_K
    code_tree: Path | None = None
    timeout_s: float = 120.0
    plan_models: dict | None = None  # role -> what the plan says it serves (revision, quantization)


@dataclass
class Measurement:
    """Every sample of one workload at one concurrency level; values per metric name."""

    workload: str
    concurrency: int
    values: dict[str, list[float]]
    requests: int
    wall_s: float
    server: ServerView | None = None  # the workload's server, scraped around this level alone


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
    measured: dict = field(default_factory=dict)  # what was measured: models, versions, device


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


RequestFn = Callable[[int, str], Awaitable[dict[str, float]]]


async def fit_chars(api: Api, r: Resolved, sample: str, reserve_tokens: int, want_chars: int) -> int:
    """``want_chars`` of code, or fewer when that would not fit the served max_model_len less
    ``reserve_tokens``: characters per token from vLLM's /tokenize on ``sample`` (a server without
    /tokenize or without a listed max_model_len keeps ``want_chars``)."""
    mml = (r.listed or {}).get("max_model_len")
    if not isinstance(mml, int) or not sample:
        return want_chars
    try:
        resp = await api.client.post(
            f"{r.endpoint.root}/tokenize", json={"model": r.model, "prompt": sample}, headers=api.headers
        )
        count = int(resp.json()["count"]) if resp.status_code == 200 else 0
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        count = 0
    if count <= 0:
        return want_chars
    fits = int((mml - reserve_tokens) * len(sample) / count * 0.8)  # 20% margin: code is uneven
    return max(200, min(want_chars, fits))


def _request_fns(
    api: Api, res: dict[str, Resolved], s: Settings, index: search.Index, session: str
) -> dict[str, RequestFn]:
    """One function per workload: ``fn(i, phase)`` sends request i of a phase ("warm-1", "run-4")."""
    files = index.paths
    # Continue's split of the prompt budget: at most a fifth after the cursor.
    suffix_chars = s.autocomplete_context_chars // 5
    cursors = workloads.cursors(index.tree, files, prefix_chars=s.autocomplete_context_chars - suffix_chars,
                                suffix_chars=suffix_chars)  # fmt: skip
    contexts = workloads.chat_contexts(index.tree, files, s.chat_context_chars)
    stops = s.fim.stop if s.max_stop_words is None else s.fim.stop[: s.max_stop_words]
    conversations: dict[tuple[str, int], tuple[list[dict[str, str]], str]] = {}

    async def autocomplete(i: int, phase: str) -> dict[str, float]:
        cur = workloads.pick(cursors, i)
        prompt = s.fim.render(cur.prefix, cur.suffix if s.fim.family else "")
        return await api.complete(res["autocomplete"], prompt, s.autocomplete_max_tokens, stops)

    async def chat(i: int, phase: str) -> dict[str, float]:
        messages = workloads.first_turn(f"{session}-{phase}-{i}", workloads.pick(contexts, i), i)
        sample, answer = await api.chat(res["chat"], messages, s.chat_max_tokens)
        conversations[(phase, i)] = (messages, answer)
        return sample

    async def chat_followup(i: int, phase: str) -> dict[str, float]:
        # The second turn of the conversation chat(i) began at this level: its prompt is that
        # whole first turn plus the answer, so the prefix cache holds most of it.
        messages, answer = conversations.pop((phase, i))
        sample, _ = await api.chat(res["chat"], workloads.second_turn(messages, answer, i), s.chat_max_tokens)
        return sample

    async def embed(i: int, phase: str) -> dict[str, float]:
        _, elapsed = await api.embed(res["embed"], [workloads.pick(workloads.EMBED_INPUTS, i)])
        return {"latency_ms": elapsed * 1000.0}

    async def search_q(i: int, phase: str) -> dict[str, float]:
        _, elapsed = await search.query(api, res["embed"], index, workloads.pick(workloads.SEARCH_QUERIES, i), s.top_k)
        return {"latency_ms": elapsed * 1000.0}

    return {
        "autocomplete": autocomplete,
        "chat": chat,
        "chat_followup": chat_followup,
        "embed": embed,
        "search": search_q,
    }


async def _settled_scrape(
    client: httpx.Client, root: str, before: list[metrics.MetricSample] | None, sent: int
) -> list[metrics.MetricSample] | None:
    """A scrape that already counts the ``sent`` requests (or the last one after SETTLE_S)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = await asyncio.to_thread(metrics.scrape, client, root)
        if after is None or before is None or time.monotonic() > deadline:
            return after
        if metrics.total(after, metrics.REQUESTS) - metrics.total(before, metrics.REQUESTS) >= sent:
            return after
        await asyncio.sleep(0.05)


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
            session = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            # Continue prunes its prompts to the served context (contextLength); the bench fits its
            # character budgets the same way, from the server's own tokenizer.
            sample = "".join(p.read_text(errors="replace") for p in index.paths[:8])[:8000]
            s = replace(
                s,
                autocomplete_context_chars=await fit_chars(
                    api, res["autocomplete"], sample, s.autocomplete_max_tokens + 64, s.autocomplete_context_chars
                ),
                chat_context_chars=await fit_chars(
                    api, res["chat"], sample, 2 * s.chat_max_tokens + 512, s.chat_context_chars
                ),
            )
            fns = _request_fns(api, res, s, index, session)

            def level_fn(name: str, phase: str) -> Callable[[int], Awaitable[dict[str, float]]]:
                return lambda i: fns[name](i, phase)

            # Warm-up rounds at every level: a batch size the server has not seen yet can stall
            # (CPU builds compile kernels per shape), and that stall is not what users live with.
            step = progress("warm-up", s.warmup * sum(s.concurrency) * len(WORKLOADS))
            for c in s.concurrency:
                for name in WORKLOADS:
                    await run_level(level_fn(name, f"warm-{c}"), s.warmup * c, c, step)

            before = await asyncio.to_thread(_scrape_all, sync_client, roots)
            tally.reset()
            for c in s.concurrency:
                for name in WORKLOADS:
                    root = res[ROLE[name]].endpoint.root
                    sent0 = tally.requests[root]
                    b0 = await asyncio.to_thread(metrics.scrape, sync_client, root)
                    step = progress(f"{name} x{c}", s.requests)
                    values, wall = await run_level(level_fn(name, f"run-{c}"), s.requests, c, step)
                    a0 = await _settled_scrape(sync_client, root, b0, tally.requests[root] - sent0)
                    view = metrics.view(b0, a0) if b0 is not None and a0 is not None else None
                    result.measurements.append(Measurement(name, c, values, s.requests, wall, view))
            after = await asyncio.to_thread(_scrape_all, sync_client, roots)
            sent_requests, sent_tokens = dict(tally.requests), dict(tally.generation_tokens)

            probe = workloads.SEARCH_QUERIES[0]
            hits, _ = await search.query(api, res["embed"], index, probe, s.top_k)
            result.search = SearchInfo(
                str(tree), index.files, index.chunks, index.dimensions, index.index_s, s.top_k, probe, hits
            )

        result.measured = {
            "roles": {
                role: {
                    "url": r.endpoint.root,
                    "served_as": r.model,
                    "weights": (r.listed or {}).get("root"),
                    "max_model_len": (r.listed or {}).get("max_model_len"),
                    **{f"plan_{k}": v for k, v in ((s.plan_models or {}).get(role) or {}).items()},
                }
                for role, r in res.items()
            },
            "servers": {root: server_version(sync_client, root, api_key) for root in roots},
            "device": _device(),
            "fim": {
                "family": s.fim.family,
                "template": s.fim.template,
                "stop": list(s.fim.stop),
                "stop_sent": list(s.fim.stop if s.max_stop_words is None else s.fim.stop[: s.max_stop_words]),
                "max_tokens": s.autocomplete_max_tokens,
            },
        }

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


def _device() -> dict:
    """``toolkit detect`` on the machine the bench ran on (the servers' machine when run there)."""
    from toolkit import detection

    try:
        facts = detection.detect()
    except Exception as err:  # detection must not cost the run its figures
        return {"kind": "unknown", "message": f"toolkit detect failed: {type(err).__name__}"}
    gpus = facts.get("gpus") or []
    return {
        "kind": "gpu" if gpus else "cpu",
        "message": facts.get("message"),
        "gpus": [{k: g.get(k) for k in ("name", "memory_total_bytes", "compute_capability")} for g in gpus],
        "driver": facts.get("driver_version"),
        "cpu": facts.get("cpu", {}).get("model") if isinstance(facts.get("cpu"), dict) else None,
        "cpu_count": facts.get("cpu", {}).get("count") if isinstance(facts.get("cpu"), dict) else None,
    }


def run(endpoints: Endpoints, api_key: str | None, settings: Settings, progress: Progress = no_progress) -> BenchResult:
    """Measure every workload; raises EnvironmentProblem when an endpoint is down or answers wrongly."""
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-lancedb-") as db_dir:
        return asyncio.run(_run(endpoints, api_key, settings, progress, Path(db_dir)))
