"""Downsampling of a history query: at most ``max_points`` points, oldest first.

Pure: the points of ``[since, until]`` are put in ``max_points`` equal time buckets; a bucket
with points becomes one point at the mean of their times, each field the mean of the values
known in it (None when none is).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.fleet.history.records import POINT_FIELDS, MetricsPoint

__all__ = ["MAX_POINTS", "downsample"]

MAX_POINTS = 360


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def _merge(points: list[MetricsPoint]) -> MetricsPoint:
    if len(points) == 1:
        return points[0]
    columns = list(zip(*(p.values() for p in points), strict=True))
    fields = {name: _mean(list(col)) for name, col in zip(POINT_FIELDS, columns, strict=True)}
    ts = round(sum(p.ts for p in points) / len(points), 3)
    return MetricsPoint(ts=ts, **fields)


def downsample(
    points: Sequence[MetricsPoint], since: float, until: float, max_points: int = MAX_POINTS
) -> list[MetricsPoint]:
    """``points`` (oldest first) reduced to at most ``max_points``."""
    if len(points) <= max_points:
        return list(points)
    width = max(until - since, 1e-9) / max_points
    buckets: dict[int, list[MetricsPoint]] = {}
    for point in points:
        index = min(max_points - 1, max(0, int((point.ts - since) / width)))
        buckets.setdefault(index, []).append(point)
    return [_merge(buckets[i]) for i in sorted(buckets)]
