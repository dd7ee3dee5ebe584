"""What the server itself counted: vLLM's Prometheus /metrics, read before and after a run.

The toolkit's venv has no prometheus_client, and the text exposition format is small, so a
short parser here does the job (``parse``). Everything but ``scrape`` is pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

# Names as vLLM 0.32 publishes them (vllm/v1/metrics/loggers.py); counters gain "_total".
REQUESTS = "vllm:request_success_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
TTFT = "vllm:time_to_first_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
DECODE_TIME = "vllm:request_decode_time_seconds"
# Per request: its decode time over its tokens after the first (engine-core timestamps, so bursts
# in the API server's stream do not touch it). Older vLLM published it as time_per_output_token.
TPOT = ("vllm:request_time_per_output_token_seconds", "vllm:time_per_output_token_seconds")
ITL = "vllm:inter_token_latency_seconds"

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound "le", cumulative count), ascending
    count: float
    sum: float

    def minus(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, c - before.get(le, 0.0)) for le, c in self.buckets),
            self.count - earlier.count,
            self.sum - earlier.sum,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket holding the q-th observation."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        prev_le, prev_c = 0.0, 0.0
        for le, c in self.buckets:
            if c >= rank:
                if math.isinf(le):
                    return prev_le  # the highest finite bound is all a histogram can say
                if c == prev_c:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
            prev_le, prev_c = le, c
        return prev_le

    def bounds(self, q: float) -> tuple[float, float] | None:
        """The bucket (lower, upper] that holds the q-th observation: all a histogram knows for sure.

        ``quantile`` interpolates inside it; a figure from the lowest bucket (0, le] is only "at most le".
        """
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        prev_le = 0.0
        for le, c in self.buckets:
            if c >= rank and c > 0:
                return (prev_le, le)
            prev_le = le
        return (prev_le, math.inf)

    def share_at_most(self, le: float) -> float | None:
        """Share of observations <= ``le`` when ``le`` is a bucket bound, else None (not knowable)."""
        if self.count <= 0:
            return None
        for bound, c in self.buckets:
            if math.isclose(bound, le, rel_tol=1e-9):
                return c / self.count
        return None

    def as_dict(self, scale: float = 1000.0) -> dict[str, Any]:
        """count, mean, p50/p95 (interpolated) and the p95's bucket, times ``scale`` (s -> ms)."""
        b95 = self.bounds(0.95)
        return {
            "count": self.count,
            "mean": self.sum / self.count * scale if self.count else None,
            "p50": _scaled(self.quantile(0.5), scale),
            "p95": _scaled(self.quantile(0.95), scale),
            "p95_bucket": None if b95 is None else [b95[0] * scale, None if math.isinf(b95[1]) else b95[1] * scale],
        }


def _scaled(v: float | None, scale: float) -> float | None:
    return None if v is None else v * scale


@dataclass(frozen=True)
class ServerView:
    """Deltas between two scrapes of one server."""

    requests: float
    generation_tokens: float
    ttft: Histogram
    decode_s: float  # summed decode phase of the finished requests (first token to last)
    e2e: Histogram = Histogram((), 0.0, 0.0)
    tpot: Histogram = Histogram((), 0.0, 0.0)  # per-request time per output token
    itl: Histogram = Histogram((), 0.0, 0.0)
    prompt_tokens: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0

    @property
    def prefix_hit_rate(self) -> float | None:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Mean decode speed the server saw: tokens after each request's first, over decode time."""
        tokens = self.generation_tokens - self.requests
        return tokens / self.decode_s if self.decode_s > 0 and tokens > 0 else None


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse(text: str) -> list[MetricSample]:
    """Samples of a Prometheus text exposition; comments and blank lines are skipped.

    Raises ValueError on a line that is not a sample, so a page that is not /metrics is noticed.
    """
    samples = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"line {lineno} is not a Prometheus sample: {line[:80]!r}")
        labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(m["labels"] or "")))
        try:
            value = float(m["value"])
        except ValueError:
            raise ValueError(f"line {lineno} has no numeric value: {line[:80]!r}") from None
        samples.append(MetricSample(m["name"], labels, value))
    return samples


def total(samples: Iterable[MetricSample], name: str) -> float:
    """Sum of a metric over all its label sets (every model name, every finish reason)."""
    return sum(s.value for s in samples if s.name == name)


def histogram(samples: Iterable[MetricSample], name: str) -> Histogram:
    """A histogram summed over all label sets except ``le``."""
    buckets: dict[float, float] = {}
    count = total_sum = 0.0
    for s in samples:
        if s.name == f"{name}_bucket":
            le = float(dict(s.labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name == f"{name}_count":
            count += s.value
        elif s.name == f"{name}_sum":
            total_sum += s.value
    return Histogram(tuple(sorted(buckets.items())), count, total_sum)


def has_vllm_metrics(samples: Iterable[MetricSample]) -> bool:
    return any(s.name.startswith("vllm:") for s in samples)


def _tpot_name(samples: list[MetricSample]) -> str:
    names = {s.name for s in samples}
    return next((n for n in TPOT if f"{n}_count" in names), TPOT[0])


def view(before: list[MetricSample], after: list[MetricSample]) -> ServerView:
    """What the server saw between two scrapes (bucket by bucket: the histograms are cumulative)."""

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    def hist(name: str) -> Histogram:
        return histogram(after, name).minus(histogram(before, name))

    return ServerView(
        requests=delta(REQUESTS),
        generation_tokens=delta(GENERATION_TOKENS),
        ttft=hist(TTFT),
        decode_s=histogram(after, DECODE_TIME).sum - histogram(before, DECODE_TIME).sum,
        e2e=hist(E2E),
        tpot=hist(_tpot_name(after)),
        itl=hist(ITL),
        prompt_tokens=delta(PROMPT_TOKENS),
        prefix_queries=delta(PREFIX_QUERIES),
        prefix_hits=delta(PREFIX_HITS),
    )


def scrape(client: httpx.Client, root_url: str) -> list[MetricSample] | None:
    """Samples from ``root_url``/metrics, or None when the server has no vLLM metrics (e.g. Ollama)."""
    try:
        resp = client.get(f"{root_url}/metrics")
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        samples = parse(resp.text)
    except ValueError:
        return None
    return samples if has_vllm_metrics(samples) else None
