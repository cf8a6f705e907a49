"""Snapshots to the wire and the log: the ``metrics`` payload body (docs/telemetry.md) and the
stats lines. Pure mapping, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.app.monitor_component import MonitorComponent
from agent.pipeline.stats import PipelineStats


def metrics_body(
    uptime_s: float,
    pipelines: Mapping[str, PipelineStats | None],
    models: Mapping[str, dict[str, Any] | None],
    monitor: MonitorComponent | None,
) -> dict[str, Any]:
    """The ``metrics`` payload body from the daemon's uptime, each pipeline's stats, each
    model's info and the monitor (its last sample and the governor's decision)."""
    sources: dict[str, Any] = {}
    stages: dict[str, float] = {}
    served: dict[str, Any] = {}
    for name, stats in pipelines.items():
        if stats is None:
            continue
        sources.update(_sources(stats))
        for stage, v in stats.latency_ms.items():
            if stage != "total" and v.p50 is not None:
                stages[f"{name}.{stage}" if len(pipelines) > 1 else stage] = v.p50
        served[name] = models.get(name)
    body: dict[str, Any] = {
        "uptime_s": uptime_s,
        "sources": sources,
        "stages_ms": stages,
        "models": {k: v for k, v in served.items() if v is not None},
    }
    first = next((v for v in served.values() if v is not None), None)
    if first is not None:
        body["model"] = first
    if monitor is not None:
        body.update(_monitor_figures(monitor))
    return body


def _sources(stats: PipelineStats) -> dict[str, Any]:
    total = stats.latency_ms.get("total")
    p50, p99 = (total.p50, total.p99) if total is not None else (None, None)
    return {
        sname: {
            "state": s.state or "unknown",
            "fps": max(0.0, float(s.fps)),
            "latency_ms": {"p50": p50, "p99": p99},
            "drops": int(s.dropped) + int(s.shed),
            "frames": int(s.results),
        }
        for sname, s in stats.sources.items()
    }


def _monitor_figures(monitor: MonitorComponent) -> dict[str, Any]:
    body: dict[str, Any] = {}
    sample = monitor.last_sample
    if sample is not None:
        if sample.board_power_w is not None:
            body["power_w"] = sample.board_power_w
        body["temperatures_c"] = {k: v for k, v in sample.temps_c.items() if v is not None}
        mem = sample.memory
        if mem.total_mib is not None and mem.used_mib is not None:
            body["memory"] = {
                "used_mib": mem.used_mib,
                "total_mib": mem.total_mib,
                "used_pct": mem.used_pct,
            }
        if sample.gpu_load_pct is not None:
            body["gpu_load_pct"] = sample.gpu_load_pct
    fpw = monitor.energy.to_json().get("fps_per_watt")
    if isinstance(fpw, (int, float)):
        body["fps_per_w"] = fpw
    decision = monitor.governor.decision
    body["governor"] = {
        "state": monitor.governor.state.value,
        "workers": decision.pool_size,
        "fps_cap": decision.fps_cap,
        "builds_allowed": decision.builds_allowed,
    }
    return body


def stats_message(stats: PipelineStats) -> str:
    """One pipeline's stats line: fps and drops per source, latency p50/p99 per stage."""
    parts = [
        f"{name}: {s.fps:.1f} fps, {s.dropped} dropped ({s.state})"
        for name, s in stats.sources.items()
    ]
    stage = ", ".join(
        f"{k} {v.p50:.1f}/{v.p99:.1f}"
        for k, v in stats.latency_ms.items()
        if v.p50 is not None and v.p99 is not None
    )
    return (
        f"{stats.model} [{stats.precision}, {stats.workers} workers] "
        + "; ".join(parts)
        + (f"; latency ms p50/p99: {stage}" if stage else "")
    )


def energy_message(monitor: Mapping[str, Any]) -> str:
    """The stats line's tail from the monitor's snapshot: fps per watt, governor state."""
    energy = monitor.get("energy") or {}
    fpw = energy.get("fps_per_watt")
    state = (monitor.get("governor") or {}).get("state")
    text = f"; {fpw:.2f} fps/W" if isinstance(fpw, (int, float)) else ""
    return text + (f"; governor {state}" if state else "")
