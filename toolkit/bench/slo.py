"""The seed's service-level objectives and their pass/fail verdicts. Pure functions, no I/O.

Each SLO names a metric, the statistic judged (latencies by their p95, the slow tail; decode
speed by its p5, i.e. 95 % of requests decode at least that fast), a comparison and a threshold.
Every SLO is judged at every concurrency level that was measured: the stack has to keep its
promise while an editor fires several requests at once, not only when idle.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from toolkit.bench.stats import Summary

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


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


@dataclass(frozen=True)
class Verdict:
    slo: Slo
    concurrency: int
    measured: float | None  # None: no samples, which fails the SLO
    samples: int
    passed: bool


SEED_SLOS: tuple[Slo, ...] = (
    Slo("autocomplete latency", "autocomplete.latency_ms", "p95", "<", 300, "ms"),
    Slo("chat time to first token", "chat.ttft_ms", "p95", "<", 5000, "ms"),
    Slo("chat decode speed", "chat.decode_tps", "p5", ">=", 20, "tokens/s"),
    Slo("codebase search latency", "search.latency_ms", "p95", "<", 200, "ms"),
)


def judge(slo: Slo, summary: Summary | None, concurrency: int) -> Verdict:
    """One verdict from one measured distribution."""
    if slo.op not in _OPS:
        raise ValueError(f"unknown comparison {slo.op!r}")
    if summary is None or summary.n == 0:
        return Verdict(slo, concurrency, None, 0, False)
    measured = summary.get(slo.stat)
    return Verdict(slo, concurrency, measured, summary.n, bool(_OPS[slo.op](measured, slo.threshold)))


def evaluate(
    summaries: Mapping[tuple[str, int], Summary | None],
    concurrencies: Iterable[int],
    slos: Iterable[Slo] = SEED_SLOS,
) -> list[Verdict]:
    """Verdicts for every SLO at every concurrency level; ``summaries`` is keyed (metric, concurrency).

    A metric that was not measured at a level fails there rather than vanishing from the table.
    """
    levels = list(concurrencies)
    return [judge(s, summaries.get((s.metric, c)), c) for s in slos for c in levels]


def all_passed(verdicts: Iterable[Verdict]) -> bool:
    verdicts = list(verdicts)
    return bool(verdicts) and all(v.passed for v in verdicts)
