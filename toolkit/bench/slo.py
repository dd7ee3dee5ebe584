"""The seed's service-level objectives and their verdicts. Pure functions, no I/O.

Each SLO names a metric, the statistic judged (latencies by their p95, the slow tail; decode
speed by its p5, i.e. 95 % of requests decode at least that fast), a comparison and a threshold.
Every SLO is judged at every concurrency level that was measured.

A verdict is PASS or FAIL only when the measurement supports it:
- INSUFFICIENT: fewer samples than the percentile needs (a p95 needs 20: with fewer, the "p95"
  is an interpolation between the two slowest requests, not a tail);
- INCONCLUSIVE: no figure the measurement supports (a stream that arrived in bursts and no
  server histogram to read decode speed from, or a histogram bucket that straddles the threshold).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

from toolkit.bench.metrics import Histogram
from toolkit.bench.stats import Summary

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
PASS, FAIL, INSUFFICIENT, INCONCLUSIVE = "PASS", "FAIL", "INSUFFICIENT", "INCONCLUSIVE"
# Client and server disagree when the client's figure lies outside the server's histogram bucket
# for the same statistic, widened by this share on each side (buckets are coarse; HTTP and the
# API server's event loop add a little on the client's side).
DISAGREE_MARGIN = 0.25


@dataclass(frozen=True)
class Slo:
    name: str  # e.g. "autocomplete latency"
    metric: str  # key of the measured metric, e.g. "autocomplete.latency_ms"
    stat: str  # Summary field judged: "p95", "p5", ...
    op: str  # one of <, <=, >, >=
    threshold: float
    unit: str

    @property
    def objective(self) -> str:
        return f"{self.stat} {self.op} {self.threshold:g} {self.unit}"

    @property
    def quantile(self) -> float:
        return float(self.stat.removeprefix("p")) / 100.0

    @property
    def min_samples(self) -> int:
        """Samples needed before the percentile is a tail and not an interpolation of the extreme
        ones: one sample beyond it, 1 / (1 - q) for an upper and 1 / q for a lower percentile."""
        q = self.quantile
        return math.ceil(round(1.0 / min(q, 1.0 - q), 9))


@dataclass(frozen=True)
class Verdict:
    slo: Slo
    concurrency: int
    measured: float | None  # the figure judged (None: no supported figure)
    samples: int
    status: str  # PASS, FAIL, INSUFFICIENT, INCONCLUSIVE
    source: str = "client"  # "client" or "server" (vLLM's /metrics histogram)
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS


SEED_SLOS: tuple[Slo, ...] = (
    Slo("autocomplete latency", "autocomplete.latency_ms", "p95", "<", 300, "ms"),
    Slo("chat time to first token", "chat.ttft_ms", "p95", "<", 5000, "ms"),
    Slo("chat decode speed", "chat.decode_tps", "p5", ">=", 20, "tokens/s"),
    Slo("codebase search latency", "search.latency_ms", "p95", "<", 200, "ms"),
)


def judge(slo: Slo, summary: Summary | None, concurrency: int) -> Verdict:
    """One verdict from the client's samples."""
    if slo.op not in _OPS:
        raise ValueError(f"unknown comparison {slo.op!r}")
    if summary is None or summary.n == 0:
        return Verdict(slo, concurrency, None, 0, INCONCLUSIVE, note="no samples")
    measured = summary.get(slo.stat)
    if summary.n < slo.min_samples:
        return Verdict(slo, concurrency, measured, summary.n, INSUFFICIENT,
                       note=f"insufficient samples: {summary.n} < {slo.min_samples} for a {slo.stat}")  # fmt: skip
    return Verdict(slo, concurrency, measured, summary.n, PASS if _OPS[slo.op](measured, slo.threshold) else FAIL)


def judge_rate_from_seconds(slo: Slo, hist: Histogram, concurrency: int, note: str = "") -> Verdict:
    """A rate SLO (tokens/s, p5 >= X) judged on a per-request seconds histogram (TPOT).

    p5 of 1/TPOT >= X is p95 of TPOT <= 1/X: the share of requests in the buckets up to 1/X. That
    share is exact when 1/X is a bucket bound (vLLM's bucket 0.05 s for 20 tokens/s); otherwise
    the buckets either side decide, or the verdict is INCONCLUSIVE.
    """
    n = int(hist.count)
    if n == 0:
        return Verdict(slo, concurrency, None, 0, INCONCLUSIVE, "server", note or "no server histogram")
    bounds = hist.bounds(1.0 - slo.quantile)
    measured = None
    if bounds is not None and bounds[0] > 0:
        q = hist.quantile(1.0 - slo.quantile)
        measured = 1.0 / q if q else None
    elif bounds is not None:
        low = f"p95 TPOT <= {bounds[1] * 1000:g} ms (lowest bucket): >= {1 / bounds[1]:g} tokens/s"
        note = f"{note}; {low}" if note else low
        measured = 1.0 / bounds[1]
    if n < slo.min_samples:
        return Verdict(slo, concurrency, measured, n, INSUFFICIENT, "server",
                       f"insufficient samples: {n} < {slo.min_samples} for a {slo.stat}")  # fmt: skip
    limit = 1.0 / slo.threshold
    need = 1.0 - slo.quantile  # share of requests whose TPOT must be at most `limit`
    share = hist.share_at_most(limit)
    if share is None:
        below = max((c for le, c in hist.buckets if le <= limit), default=0.0) / hist.count
        above = min((c for le, c in hist.buckets if le >= limit), default=hist.count) / hist.count
        if below >= need:
            share = below
        elif above < need:
            share = above
        else:
            why = "a histogram bucket straddles the SLO"
            return Verdict(slo, concurrency, measured, n, INCONCLUSIVE, "server", why)
    status = PASS if share >= need - 1e-12 else FAIL
    return Verdict(slo, concurrency, measured, n, status, "server", note)


def disagreement(
    client: float | None, bucket: tuple[float, float | None] | None, margin: float = DISAGREE_MARGIN
) -> bool:
    """True when the client's figure lies outside the server's bucket widened by ``margin``."""
    if client is None or bucket is None:
        return False
    lo, hi = bucket
    return client < lo * (1 - margin) or (hi is not None and client > hi * (1 + margin))


def all_passed(verdicts: Iterable[Verdict]) -> bool:
    verdicts = list(verdicts)
    return bool(verdicts) and all(v.passed for v in verdicts)


def overall(verdicts: Iterable[Verdict]) -> str:
    """FAIL if any failed, else PASS if all passed, else INCONCLUSIVE (some could not be judged)."""
    statuses = [v.status for v in verdicts]
    if FAIL in statuses:
        return FAIL
    if statuses and all(s == PASS for s in statuses):
        return PASS
    return INCONCLUSIVE
