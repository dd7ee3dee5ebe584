"""Percentiles with their sample counts. Pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """Distribution of one metric at one concurrency level; ``n`` is the number of samples."""

    n: int
    mean: float
    min: float
    max: float
    p5: float
    p50: float
    p95: float
    p99: float

    def get(self, stat: str) -> float:
        return float(getattr(self, stat))

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default method).

    Linear interpolation keeps p95/p99 meaningful for the small samples a bench takes: with 20
    samples, nearest-rank p99 would simply be the maximum.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Summary | None:
    """Summary of the samples, or None when there are none (a summary of nothing would lie)."""
    if not values:
        return None
    return Summary(
        n=len(values),
        mean=sum(values) / len(values),
        min=min(values),
        max=max(values),
        p5=percentile(values, 5),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
    )
