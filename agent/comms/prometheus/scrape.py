"""Read a running daemon's ``/metrics`` back into typed figures (``edge-agent monitor --attach``).

The inverse of :mod:`.families`: :func:`fetch_exposition` takes the endpoint's text with the size
and time bounded (the endpoint is trusted no further than any other network peer), and
:func:`parse_figures` maps the ``edge_agent_*`` series (docs/telemetry.md, "Prometheus") onto a
:class:`DaemonFigures`. A series the scrape lacks is ``None`` (the exporter leaves out what the
device cannot read, never 0); an empty scrape (the daemon has not reported yet) has
``taken_at is None``. Unknown series are ignored, so a newer daemon still shows.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.core.errors import CommsError

__all__ = [
    "MAX_EXPOSITION_BYTES",
    "DaemonFigures",
    "ModelFigures",
    "SourceFigures",
    "StageFigures",
    "fetch_exposition",
    "parse_figures",
]

P = "edge_agent_"
MAX_EXPOSITION_BYTES = 4 * 1024 * 1024
"""A daemon's scrape is a few KiB (one series per source, stage, zone and rail); past 4 MiB the
peer is not an edge-agent endpoint."""

Labels = Mapping[str, str]
Series = dict[str, list[tuple[Labels, float]]]


@dataclass(frozen=True)
class SourceFigures:
    name: str
    state: str | None = None
    fps: float | None = None
    drops: int | None = None
    frames: int | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None


@dataclass(frozen=True)
class StageFigures:
    name: str
    p50_s: float | None = None
    p99_s: float | None = None


@dataclass(frozen=True)
class ModelFigures:
    name: str
    version: str = ""
    precision: str = ""
    engine_hash: str = ""


@dataclass(frozen=True)
class DaemonFigures:
    """One scrape of the daemon's endpoint (base units, as exported)."""

    taken_at: float | None = None
    uptime_s: float | None = None
    governor_state: str | None = None
    governor_workers: int | None = None
    governor_fps_cap: float | None = None
    governor_builds_allowed: bool | None = None
    sources: tuple[SourceFigures, ...] = ()
    stages: tuple[StageFigures, ...] = ()
    models: tuple[ModelFigures, ...] = ()
    power_w: float | None = None
    power_rail_w: dict[str, float] = field(default_factory=dict[str, float])
    temperature_c: dict[str, float] = field(default_factory=dict[str, float])
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    memory_used_ratio: float | None = None
    swap_used_bytes: float | None = None
    swap_total_bytes: float | None = None
    gpu_load_ratio: float | None = None
    cpu_load_ratio: float | None = None
    fps_per_watt: float | None = None
    throttled: dict[str, bool] = field(default_factory=dict[str, bool])
    power_mode: str | None = None
    ota_state: str | None = None
    spool_messages: int | None = None
    spool_dropped: int | None = None
    mqtt_sent: int | None = None

    @property
    def reported(self) -> bool:
        """False until the daemon's first metrics report (an empty scrape)."""
        return self.taken_at is not None

    def hottest(self) -> tuple[str, float] | None:
        """The hottest thermal zone and its temperature, if any zone is exported."""
        if not self.temperature_c:
            return None
        zone = max(self.temperature_c, key=lambda z: self.temperature_c[z])
        return zone, self.temperature_c[zone]

    def total_fps(self) -> float | None:
        known = [s.fps for s in self.sources if s.fps is not None]
        return sum(known) if known else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fetch_exposition(
    url: str, *, timeout_s: float, max_bytes: int = MAX_EXPOSITION_BYTES, fix: str
) -> str:
    """The text at ``url`` (at most ``max_bytes``, ``timeout_s`` per socket operation).
    :class:`CommsError` carrying ``fix`` when the endpoint cannot be read."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body: bytes = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise CommsError(f"{url} answered HTTP {err.code} {err.reason}", fix=fix) from err
    except urllib.error.URLError as err:
        why = getattr(err.reason, "strerror", None) or str(err.reason)
        raise CommsError(f"cannot reach {url}: {why}", fix=fix) from err
    except (TimeoutError, OSError) as err:
        raise CommsError(f"cannot read {url}: {err or 'timed out'}", fix=fix) from err
    if len(body) > max_bytes:
        raise CommsError(
            f"{url} sent more than {max_bytes} bytes: not an edge-agent metrics endpoint",
            fix="point --attach at the daemon's metrics.host:metrics.port /metrics",
        )
    return body.decode("utf-8", "replace")


def _series(text: str, url: str) -> Series:
    out: Series = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith(P):
                    out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except (ValueError, IndexError, KeyError) as err:
        raise CommsError(
            f"{url} is not Prometheus text: {err}",
            fix="point --attach at the daemon's metrics.host:metrics.port /metrics",
        ) from err
    return out


def _one(series: Series, name: str) -> float | None:
    rows = series.get(P + name)
    return rows[0][1] if rows else None


def _count(value: float | None) -> int | None:
    """A count (counters, workers) as an int; a non-finite or negative one is unknown."""
    return int(value) if value is not None and 0 <= value < float("inf") else None


def _by(series: Series, name: str, label: str) -> dict[str, float]:
    return {lab[label]: v for lab, v in series.get(P + name, []) if label in lab}


def _state(series: Series, name: str, label: str = "state") -> str | None:
    """The label of a one-hot state series (the sample that is 1)."""
    hot = [lab[label] for lab, v in series.get(P + name, []) if v == 1.0 and label in lab]
    return hot[0] if hot else None


def _quantiles(series: Series, name: str, label: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for lab, value in series.get(P + name, []):
        if label in lab and "quantile" in lab:
            out.setdefault(lab[label], {})[lab["quantile"]] = value
    return out


def _sources(series: Series) -> tuple[SourceFigures, ...]:
    fps, drops = _by(series, "source_fps", "source"), _by(series, "source_drops_total", "source")
    frames = _by(series, "source_frames_total", "source")
    latency = _quantiles(series, "source_latency_seconds", "source")
    states = {
        lab["source"]: lab["state"]
        for lab, v in series.get(P + "source_state", [])
        if v == 1.0 and "source" in lab and "state" in lab
    }
    names = sorted({*fps, *drops, *frames, *latency, *states})
    return tuple(
        SourceFigures(
            name=n,
            state=states.get(n),
            fps=fps.get(n),
            drops=_count(drops.get(n)),
            frames=_count(frames.get(n)),
            latency_p50_s=latency.get(n, {}).get("0.5"),
            latency_p99_s=latency.get(n, {}).get("0.99"),
        )
        for n in names
    )


def _stages(series: Series) -> tuple[StageFigures, ...]:
    rows = _quantiles(series, "stage_seconds", "stage")
    return tuple(
        StageFigures(name=n, p50_s=q.get("0.5"), p99_s=q.get("0.99")) for n, q in rows.items()
    )


def _models(series: Series) -> tuple[ModelFigures, ...]:
    return tuple(
        ModelFigures(
            name=lab["model"],
            version=lab.get("version", ""),
            precision=lab.get("precision", ""),
            engine_hash=lab.get("engine_hash", ""),
        )
        for lab, v in series.get(P + "model_info", [])
        if v == 1.0 and "model" in lab
    )


def _board(series: Series) -> dict[str, Any]:
    return {
        "power_w": _one(series, "power_watts"),
        "power_rail_w": _by(series, "power_rail_watts", "rail"),
        "temperature_c": _by(series, "temperature_celsius", "zone"),
        "memory_used_bytes": _one(series, "memory_used_bytes"),
        "memory_total_bytes": _one(series, "memory_total_bytes"),
        "memory_used_ratio": _one(series, "memory_used_ratio"),
        "swap_used_bytes": _one(series, "swap_used_bytes"),
        "swap_total_bytes": _one(series, "swap_total_bytes"),
        "gpu_load_ratio": _one(series, "gpu_load_ratio"),
        "cpu_load_ratio": _one(series, "cpu_load_ratio"),
        "fps_per_watt": _one(series, "fps_per_watt"),
        "throttled": {k: v == 1.0 for k, v in _by(series, "throttled", "reason").items()},
        "power_mode": _state(series, "power_mode_info", "mode"),
    }


def parse_figures(text: str, *, url: str = "the endpoint") -> DaemonFigures:
    """The daemon's figures from one scrape's exposition text (:class:`CommsError` when the
    text is not Prometheus text)."""
    series = _series(text, url)
    builds = _one(series, "governor_builds_allowed")
    return DaemonFigures(
        taken_at=_one(series, "metrics_timestamp_seconds"),
        uptime_s=_one(series, "uptime_seconds"),
        governor_state=_state(series, "governor_state"),
        governor_workers=_count(_one(series, "governor_workers")),
        governor_fps_cap=_one(series, "governor_fps_cap"),
        governor_builds_allowed=None if builds is None else builds == 1.0,
        sources=_sources(series),
        stages=_stages(series),
        models=_models(series),
        ota_state=_state(series, "ota_state"),
        spool_messages=_count(_one(series, "spool_messages")),
        spool_dropped=_count(_one(series, "spool_dropped_total")),
        mqtt_sent=_count(_one(series, "mqtt_sent_total")),
        **_board(series),
    )
