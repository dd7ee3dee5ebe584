"""What the server itself counted: vLLM's Prometheus /metrics, read before and after a run.

The toolkit's venv has no prometheus_client, and the text exposition format is small, so a
short parser here does the job (``parse``). Everything but ``scrape`` is pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

REQUESTS = "vllm:request_success_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
TTFT = "vllm:time_to_first_token_seconds"
DECODE_TIME = "vllm:request_decode_time_seconds"

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


@dataclass(frozen=True)
class ServerView:
    """Deltas between two scrapes of one server."""

    requests: float
    generation_tokens: float
    ttft: Histogram
    decode_s: float  # summed decode phase of the finished requests (first token to last)

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


def view(before: list[MetricSample], after: list[MetricSample]) -> ServerView:
    """What the server saw between two scrapes."""
    return ServerView(
        requests=total(after, REQUESTS) - total(before, REQUESTS),
        generation_tokens=total(after, GENERATION_TOKENS) - total(before, GENERATION_TOKENS),
        ttft=histogram(after, TTFT).minus(histogram(before, TTFT)),
        decode_s=histogram(after, DECODE_TIME).sum - histogram(before, DECODE_TIME).sum,
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
