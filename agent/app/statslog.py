"""The stats lines a person reads: one per pipeline every ``daemon.stats_interval_s``, the final
one of each pipeline, and the summary when the daemon stops.

They go to :data:`~agent.core.logs.STATS_LOGGER`: on a terminal (text format) they show at any
``--log-level`` — they are ``run``'s output — and in the journal (JSON) they obey the level.
The JSON record is trimmed to what the line says (about 400 bytes instead of 1.4 KB): the full
figures go to MQTT and Prometheus (:func:`agent.app.metrics.metrics_body`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from agent.app.metrics import energy_message, stats_message
from agent.core.logs import STATS_LOGGER, log_fields
from agent.pipeline.stats import PipelineStats

__all__ = ["log_final", "log_stats", "log_summary", "stats_record"]

stats_log = logging.getLogger(STATS_LOGGER)

#: latency stages kept in the journal's stats record (all stages go to MQTT/Prometheus)
_STAGES = ("infer", "total")


def stats_record(stats: PipelineStats) -> dict[str, Any]:
    """A pipeline's stats, trimmed to what a person reads: model, precision, workers, fps cap,
    per source its state, fps, results, drops and errors; p50/p99 of inference and in total."""
    return {
        "model": stats.model,
        "precision": stats.precision,
        "workers": stats.workers,
        "fps_cap": stats.fps_cap,
        "sources": {
            name: {
                "state": s.state,
                "fps": s.fps,
                "results": s.results,
                "dropped": s.dropped,
                "errors": s.errors,
            }
            for name, s in stats.sources.items()
        },
        "latency_ms": {k: v.to_json() for k, v in stats.latency_ms.items() if k in _STAGES},
    }


def _monitor_fields(monitor: Mapping[str, Any], reading: Mapping[str, Any]) -> dict[str, Any]:
    """Governor state, board power, hottest temperature and fps per watt, where known."""
    out: dict[str, Any] = {}
    state = (monitor.get("governor") or {}).get("state")
    if state:
        out["governor"] = {"state": state}
    figures = {
        "power_w": reading.get("board_power_w"),
        "temp_c": reading.get("max_temp_c"),
        "fps_per_watt": (monitor.get("energy") or {}).get("fps_per_watt"),
    }
    out.update({k: v for k, v in figures.items() if isinstance(v, (int, float))})
    return out


def log_stats(stats: PipelineStats, monitor: Mapping[str, Any], reading: Mapping[str, Any]) -> None:
    """One pipeline's periodic stats line. ``monitor``: the monitor's snapshot (governor,
    energy; empty without a monitor); ``reading``: the governor's last reading."""
    fields = _monitor_fields(monitor, reading)
    stats_log.info(
        stats_message(stats) + energy_message(fields),
        extra=log_fields(event="stats", stats=stats_record(stats), **fields),
    )


def log_final(stats: PipelineStats, reason: str) -> None:
    """A pipeline's final stats, once it stopped (in-flight frames drained)."""
    stats_log.info(
        "final " + stats_message(stats),
        extra=log_fields(event="final_stats", stats=stats_record(stats), reason=reason),
    )


def _summary_fields(finals: Sequence[PipelineStats], serving_s: float | None) -> dict[str, Any]:
    sources = [s for stats in finals for s in stats.sources.values()]
    frames = sum(s.results for s in sources)
    out: dict[str, Any] = {"frames": frames, "dropped": sum(s.dropped for s in sources)}
    if serving_s is not None and serving_s > 0:
        out["fps"] = round(frames / serving_s, 2)
    totals = [stats.latency_ms.get("total") for stats in finals]
    p50 = [t.p50 for t in totals if t is not None and t.p50 is not None]
    p99 = [t.p99 for t in totals if t is not None and t.p99 is not None]
    if p50 and p99:
        out["latency_ms"] = {"p50": max(p50), "p99": max(p99)}
    return out


def log_summary(
    finals: Sequence[PipelineStats], reason: str, uptime_s: float, serving_s: float | None
) -> None:
    """The daemon stopped: frames served, mean fps over the serving time, drops, latency
    p50/p99 (the slowest pipeline's, with several), uptime, and why it stopped."""
    fields = _summary_fields(finals, serving_s)
    text = f"stopped ({reason}) after {uptime_s:.1f} s: {fields['frames']} frames"
    if "fps" in fields:
        text += f", {fields['fps']:.1f} fps"
    text += f", {fields['dropped']} dropped"
    latency = fields.get("latency_ms")
    if latency is not None:
        text += f", latency p50/p99 {latency['p50']:.1f}/{latency['p99']:.1f} ms"
    stats_log.info(text, extra=log_fields(event="stop", reason=reason, uptime_s=uptime_s, **fields))
