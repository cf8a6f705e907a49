"""The rows of the device history and the figures they take from the registry's records.

A :class:`MetricsPoint` is what the dashboard charts; :func:`figures` derives it from a
:class:`~agent.fleet.registry.records.MetricsSnapshot` (the same reduction the API's flat device
fields use). Event data comes from the network: :func:`bounded_data` keeps a small, sanitized
copy (depth, items, string lengths and total size bounded).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from agent.core.jsonlimits import sanitize_text
from agent.fleet.registry.records import MetricsSnapshot

__all__ = [
    "EVENTS_PER_DEVICE",
    "MAX_EVENT_BYTES",
    "OTA_PER_DEVICE",
    "EventEntry",
    "Figures",
    "MetricsPoint",
    "bounded_data",
    "figures",
]

EVENTS_PER_DEVICE = 200
"""Events kept per device (the newest)."""
OTA_PER_DEVICE = 50
"""OTA updates kept per device (the newest by ``updated_at``)."""
MAX_EVENT_BYTES = 2048
"""An event's stored data is at most this long as JSON; larger data is summarised."""

_MAX_DEPTH = 4
_MAX_ITEMS = 32
_MAX_TEXT = 256
POINT_FIELDS = ("fps", "latency_p50_ms", "power_w", "temp_max_c", "memory_used_pct")


@dataclass(frozen=True)
class Figures:
    """A device's current figures for display (None = not reported)."""

    fps: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    power_w: float | None = None
    temp_max_c: float | None = None
    memory_used_pct: float | None = None


@dataclass(frozen=True)
class MetricsPoint:
    """One stored metrics point: the controller's clock ``ts`` and the figures then."""

    ts: float
    fps: float | None = None
    latency_p50_ms: float | None = None
    power_w: float | None = None
    temp_max_c: float | None = None
    memory_used_pct: float | None = None

    @classmethod
    def at(cls, ts: float, fig: Figures) -> MetricsPoint:
        return cls(
            ts=ts,
            fps=fig.fps,
            latency_p50_ms=fig.latency_p50_ms,
            power_w=fig.power_w,
            temp_max_c=fig.temp_max_c,
            memory_used_pct=fig.memory_used_pct,
        )

    def values(self) -> tuple[float | None, ...]:
        return tuple(getattr(self, name) for name in POINT_FIELDS)

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, **{name: getattr(self, name) for name in POINT_FIELDS}}


@dataclass(frozen=True)
class EventEntry:
    """One device event as kept: the device's ``ts``, its ``kind`` and bounded ``data``."""

    ts: float
    kind: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "kind": self.kind, "data": self.data}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _worst(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return max(known) if known else None


def figures(snapshot: MetricsSnapshot | None) -> Figures:
    """The display figures of ``snapshot``: total fps, the worst source's latency, the hottest
    zone; absent readings stay None."""
    if snapshot is None:
        return Figures()
    sources = list(snapshot.sources.values())
    return Figures(
        fps=_finite(snapshot.fps),
        latency_p50_ms=_worst([s.latency_p50_ms for s in sources]),
        latency_p99_ms=_worst([s.latency_p99_ms for s in sources]),
        power_w=_finite(snapshot.power_w),
        temp_max_c=_worst(list(snapshot.temperatures_c.values())),
        memory_used_pct=_finite(snapshot.memory_used_pct),
    )


def _bounded(value: Any, depth: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return sanitize_text(value, max_len=_MAX_TEXT)
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if isinstance(k, str)][:_MAX_ITEMS]  # pyright: ignore[reportUnknownVariableType]
        return {sanitize_text(k, max_len=64): _bounded(v, depth + 1) for k, v in items}
    if isinstance(value, list):
        return [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]  # pyright: ignore[reportUnknownVariableType]
    return sanitize_text(str(value), max_len=64)


def bounded_data(data: dict[str, Any]) -> dict[str, Any]:
    """A sanitized copy of an event's ``data`` whose JSON is at most :data:`MAX_EVENT_BYTES`;
    beyond that, ``{"truncated": true, "bytes": N, "keys": [...]}``."""
    kept: dict[str, Any] = _bounded(data, 0)
    size = len(json.dumps(kept, separators=(",", ":")))
    if size <= MAX_EVENT_BYTES:
        return kept
    keys = [k[:32] for k in list(kept)[:16]]
    return {"truncated": True, "bytes": size, "keys": keys}
