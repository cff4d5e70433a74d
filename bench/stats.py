"""The few statistics the benchmark reports: medians in milliseconds and nearest-rank percentiles."""

from __future__ import annotations

import statistics


def median_ms(values: list[float]) -> float:
    """The median of durations in seconds, in milliseconds to the microsecond."""
    return round(statistics.median(values) * 1000, 3)


def percentile(values: list[float], p: float) -> float:
    """The value at rank `p` (0 to 1) of the sorted values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]
