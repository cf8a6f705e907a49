"""The device's Prometheus series, built from one ``metrics`` body (``metrics/2``).

A pure mapping: :func:`snapshot_families` turns the latest body into metric families following
the Prometheus naming guide: base units (seconds, bytes, watts, celsius, ratios 0-1), counters
typed as counters and ending in ``_total``, percentiles as ``quantile`` labels ("0.5", "0.99").
A reading the body does not carry is no sample at all (never 0), and a family without samples
is left out. The series table with the MQTT field each one mirrors is in docs/telemetry.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.samples import Sample

__all__ = ["snapshot_families"]

P = "edge_agent_"


def _num(value: Any) -> float | None:
    """A finite number (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _map(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]


def _label(value: Any) -> str:
    """A label value: "" for unknown (the Prometheus convention for an absent label)."""
    return "" if value is None or isinstance(value, (dict, list)) else str(value)


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(P + name, doc)
    if (number := _num(value)) is not None:
        fam.add_metric([], number)
    return fam


def _counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
    fam = CounterMetricFamily(P + name + "_total", doc)
    if (number := _num(value)) is not None and number >= 0:
        fam.add_metric([], number)
    return fam


def _labelled(name: str, doc: str, label: str, values: Mapping[str, Any]) -> GaugeMetricFamily:
    """One gauge sample per ``label`` value with a known number."""
    fam = GaugeMetricFamily(P + name, doc, labels=[label])
    for key, value in values.items():
        if (number := _num(value)) is not None:
            fam.add_metric([key], number)
    return fam


def _one_hot(name: str, doc: str, labels: list[str], values: Iterable[list[str]]) -> Metric:
    """An info/state gauge: 1 for each label set given."""
    fam = GaugeMetricFamily(P + name, doc, labels=labels)
    for label_values in values:
        fam.add_metric(label_values, 1.0)
    return fam


def _quantiles(name: str, doc: str, label: str, rows: Mapping[str, Any]) -> Metric:
    """A summary of percentile samples only (``quantile="0.5"``...): the pipeline keeps a
    window of latencies, not their running sum and count, so there is no ``_sum``/``_count``."""
    fam = SummaryMetricFamily(P + name, doc, labels=[label])
    for key, quantiles in rows.items():
        for q, value in _map(quantiles).items():
            if (number := _num(value)) is not None and _num(_float(q)) is not None:
                fam.samples.append(Sample(fam.name, {label: key, "quantile": q}, number))
    return fam


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _source_families(m: Mapping[str, Any]) -> list[Metric]:
    sources = _map(m.get("sources"))
    fps = GaugeMetricFamily(P + "source_fps", "Frames served per second.", labels=["source"])
    drops = CounterMetricFamily(
        P + "source_drops_total", "Frames dropped or shed since the pipeline started.",
        labels=["source"],
    )  # fmt: skip
    frames = CounterMetricFamily(
        P + "source_frames_total", "Results served since the pipeline started.", labels=["source"]
    )
    states: list[list[str]] = []
    for name, raw in sources.items():
        src = _map(raw)
        if isinstance(src.get("state"), str):
            states.append([name, src["state"]])
        for fam, key in ((fps, "fps"), (drops, "drops"), (frames, "frames")):
            if (number := _num(src.get(key))) is not None:
                fam.add_metric([name], number)
    latency = _quantiles(
        "source_latency_seconds",
        "Capture-to-result latency percentiles of the source's pipeline, seconds.",
        "source",
        {name: _map(src).get("latency_seconds") for name, src in sources.items()},
    )
    stage = _quantiles(
        "stage_seconds", "Time per pipeline stage, percentiles, seconds.", "stage",
        _map(m.get("stage_seconds")),
    )  # fmt: skip
    state = _one_hot(
        "source_state", "1 for the source's current state.", ["source", "state"], states
    )
    return [fps, latency, drops, frames, state, stage]


def _board_families(m: Mapping[str, Any]) -> list[Metric]:
    memory, swap = _map(m.get("memory")), _map(m.get("swap"))
    throttled = {k: 1.0 if v is True else 0.0 for k, v in _map(m.get("throttled")).items()}
    mode = m.get("power_mode")
    return [
        _gauge("uptime_seconds", "Agent uptime, seconds.", m.get("uptime_seconds")),
        _gauge("power_watts", "Board input power, watts.", m.get("power_watts")),
        _labelled(
            "power_rail_watts", "Power per rail, watts.", "rail", _map(m.get("power_rail_watts"))
        ),
        _labelled(
            "temperature_celsius",
            "Thermal zone temperature, celsius.",
            "zone",
            _map(m.get("temperature_celsius")),
        ),
        _gauge("memory_used_bytes", "Used memory, bytes.", memory.get("used_bytes")),
        _gauge("memory_total_bytes", "Total memory, bytes.", memory.get("total_bytes")),
        _gauge("memory_used_ratio", "Used share of memory (0-1).", memory.get("used_ratio")),
        _gauge("swap_used_bytes", "Used swap, bytes.", swap.get("used_bytes")),
        _gauge("swap_total_bytes", "Total swap, bytes (0: no swap).", swap.get("total_bytes")),
        _gauge("gpu_load_ratio", "GPU load (0-1).", m.get("gpu_load_ratio")),
        _gauge("cpu_load_ratio", "CPU load over all cores (0-1).", m.get("cpu_load_ratio")),
        _gauge("fps_per_watt", "Total frames per second per watt.", m.get("fps_per_watt")),
        _labelled("throttled", "1 while a throttle reason is active.", "reason", throttled),
        _one_hot(
            "power_mode_info",
            "1 for the nvpmodel power mode in force.",
            ["mode"],
            [[mode]] if isinstance(mode, str) and mode else [],
        ),
    ]


def _model_rows(m: Mapping[str, Any]) -> list[list[str]]:
    models = list(_map(m.get("models")).values()) or [m.get("model")]
    rows: list[list[str]] = []
    for raw in models:
        info = _map(raw)
        if isinstance(info.get("name"), str):
            rows.append(
                [info["name"]]
                + [_label(info.get(k)) for k in ("version", "precision", "engine_hash")]
            )
    return rows


def _fleet_families(m: Mapping[str, Any]) -> list[Metric]:
    gov, comms, ota = _map(m.get("governor")), _map(m.get("comms")), _map(m.get("ota"))
    builds = gov.get("builds_allowed")
    gov_state, ota_state = gov.get("state"), ota.get("state")
    profile, board = m.get("profile"), m.get("board")
    return [
        _one_hot(
            "device_info",
            "1, labelled with the profile in force and the board.",
            ["profile", "board"],
            [[_label(profile), _label(board)]] if profile or board else [],
        ),
        _one_hot(
            "model_info",
            "1 for every serving model.",
            ["model", "version", "precision", "engine_hash"],
            _model_rows(m),
        ),
        _one_hot(
            "governor_state",
            "1 for the governor's current state.",
            ["state"],
            [[gov_state]] if isinstance(gov_state, str) else [],
        ),
        _gauge("governor_workers", "Worker streams the governor allows.", gov.get("workers")),
        _gauge("governor_fps_cap", "The governor's fps cap (absent: none).", gov.get("fps_cap")),
        _gauge(
            "governor_builds_allowed",
            "1 while engine builds are admitted.",
            None if not isinstance(builds, bool) else float(builds),
        ),
        _one_hot(
            "ota_state",
            "1 for the state of the last OTA update.",
            ["state"],
            [[ota_state]] if isinstance(ota_state, str) else [],
        ),
        _gauge("spool_messages", "Messages in the spool awaiting a PUBACK.", comms.get("spooled")),
        _counter(
            "spool_dropped", "Messages dropped, spool full, since start.", comms.get("dropped")
        ),
        _counter(
            "spool_expired", "Messages dropped as too old, since start.", comms.get("expired")
        ),
        _counter("mqtt_sent", "Spooled messages acknowledged since start.", comms.get("sent")),
    ]


def snapshot_families(m: Mapping[str, Any], *, taken_at: float | None = None) -> list[Metric]:
    """Every family with at least one sample for the ``metrics/2`` body ``m``; ``taken_at``
    (epoch s) becomes ``edge_agent_metrics_timestamp_seconds``."""
    families = [
        _gauge(
            "metrics_timestamp_seconds",
            "When these figures were taken (Unix time, seconds).",
            taken_at,
        ),
        *_source_families(m),
        *_board_families(m),
        *_fleet_families(m),
    ]
    return [fam for fam in families if fam.samples]
