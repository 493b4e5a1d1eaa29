"""Percentiles of latencies, and the rates of the latency scenario: pure functions, no services.

Percentiles are `statistics.quantiles(method="inclusive")`: the sorted values are read at
position (n - 1) * p, interpolating linearly between neighbours (numpy's default, "linear").
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Latencies of one run, in milliseconds; `count` values summarised."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> list[float]:
    """The `points` (whole percents, 1 to 99) of `values`; ValueError if there are none."""
    if not values:
        raise ValueError("no values")
    if any(not 1 <= p <= 99 for p in points):
        raise ValueError(f"percentiles are whole numbers from 1 to 99, not {list(points)}")
    if len(values) == 1:  # quantiles() wants two values before Python 3.13
        return [float(values[0])] * len(points)
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # cuts[k - 1] is the k-th percentile
    return [cuts[p - 1] for p in points]


def summarise(latencies_ms: Sequence[float]) -> Summary | None:
    """p50, p95, p99 and max of the latencies; None if there are none."""
    if not latencies_ms:
        return None
    p50, p95, p99 = percentiles(latencies_ms)
    return Summary(len(latencies_ms), p50, p95, p99, float(max(latencies_ms)))


def fraction_rates(fractions: Sequence[float], max_rate: float) -> dict[float, int]:
    """Each fraction of the maximum -> records per second (rounded, at least 1)."""
    if max_rate <= 0:
        raise ValueError(f"the maximum rate must be positive, not {max_rate}")
    return {f: max(1, round(f * max_rate)) for f in fractions}


def nearest(fractions: Sequence[float], target: float) -> float:
    """The fraction closest to `target` (the first of a tie): where one-rate contenders run."""
    return min(fractions, key=lambda f: abs(f - target))
