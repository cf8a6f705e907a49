"""Snapshots to the wire and the log: the ``metrics`` payload body (docs/telemetry.md) and the
stats lines. Pure mapping, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.app.monitor_component import MonitorComponent
from agent.monitor.sample import Sample
from agent.pipeline.stats import PipelineStats

MIB = 1024 * 1024
"""Bytes per MiB (the monitor reads memory in MiB; ``metrics/2`` carries bytes)."""


def metrics_body(
    uptime_s: float,
    pipelines: Mapping[str, PipelineStats | None],
    models: Mapping[str, dict[str, Any] | None],
    monitor: MonitorComponent | None,
) -> dict[str, Any]:
    """The ``metrics`` payload body (``metrics/2``: base units, with the deprecated
    ``metrics/1`` fields beside them) from the daemon's uptime, each pipeline's stats, each
    model's info and the monitor (its last sample and the governor's decision)."""
    sources: dict[str, Any] = {}
    stages_ms: dict[str, float] = {}
    stage_seconds: dict[str, dict[str, float]] = {}
    served: dict[str, Any] = {}
    for name, stats in pipelines.items():
        if stats is None:
            continue
        sources.update(_sources(stats))
        for stage, v in stats.latency_ms.items():
            key = f"{name}.{stage}" if len(pipelines) > 1 else stage
            if stage != "total" and v.p50 is not None:
                stages_ms[key] = v.p50
                stage_seconds[key] = _quantiles_s(v.p50, v.p99)
        served[name] = models.get(name)
    body: dict[str, Any] = {
        "uptime_s": uptime_s,
        "uptime_seconds": uptime_s,
        "sources": sources,
        "stages_ms": stages_ms,
        "stage_seconds": stage_seconds,
        "models": {k: v for k, v in served.items() if v is not None},
    }
    first = next((v for v in served.values() if v is not None), None)
    if first is not None:
        body["model"] = first
    if monitor is not None:
        body.update(_monitor_figures(monitor))
    return body


def _quantiles_s(p50_ms: float | None, p99_ms: float | None) -> dict[str, float]:
    """Percentiles in ms → the ``{"0.5": s, "0.99": s}`` map (unknown ones left out)."""
    pairs = (("0.5", p50_ms), ("0.99", p99_ms))
    return {q: ms / 1000.0 for q, ms in pairs if ms is not None}


def _sources(stats: PipelineStats) -> dict[str, Any]:
    total = stats.latency_ms.get("total")
    p50, p99 = (total.p50, total.p99) if total is not None else (None, None)
    return {
        sname: {
            "state": s.state or "unknown",
            "fps": max(0.0, float(s.fps)),
            "latency_ms": {"p50": p50, "p99": p99},
            "latency_seconds": _quantiles_s(p50, p99),
            "drops": int(s.dropped) + int(s.shed),
            "frames": int(s.results),
        }
        for sname, s in stats.sources.items()
    }


def _monitor_figures(monitor: MonitorComponent) -> dict[str, Any]:
    body: dict[str, Any] = {}
    sample = monitor.last_sample
    if sample is not None:
        body.update(sample_figures(sample))
    fpw = monitor.energy.to_json().get("fps_per_watt")
    if isinstance(fpw, (int, float)):
        body["fps_per_w"] = body["fps_per_watt"] = fpw
    decision = monitor.governor.decision
    body["governor"] = {
        "state": monitor.governor.state.value,
        "workers": decision.pool_size,
        "fps_cap": decision.fps_cap,
        "builds_allowed": decision.builds_allowed,
    }
    return body


def sample_figures(sample: Sample) -> dict[str, Any]:
    """One monitor reading as ``metrics`` fields; unknown readings are left out (no rails: no
    ``power_watts``, not 0)."""
    body: dict[str, Any] = {}
    if sample.board_power_w is not None:
        body["power_w"] = body["power_watts"] = sample.board_power_w
    body["power_rail_watts"] = {k: v for k, v in sample.power_w.items() if v is not None}
    temps = {k: v for k, v in sample.temps_c.items() if v is not None}
    body["temperatures_c"], body["temperature_celsius"] = temps, dict(temps)
    mem = sample.memory
    if mem.total_mib is not None and mem.used_mib is not None:
        pct = mem.used_pct
        body["memory"] = {
            "used_mib": mem.used_mib,
            "total_mib": mem.total_mib,
            "used_pct": pct,
            "used_bytes": round(mem.used_mib * MIB),
            "total_bytes": round(mem.total_mib * MIB),
            "used_ratio": None if pct is None else min(1.0, max(0.0, pct / 100.0)),
        }
    if mem.swap_total_mib is not None and mem.swap_used_mib is not None:
        body["swap"] = {
            "used_bytes": round(mem.swap_used_mib * MIB),
            "total_bytes": round(mem.swap_total_mib * MIB),
        }
    if sample.gpu_load_pct is not None:
        body["gpu_load_pct"] = sample.gpu_load_pct
        body["gpu_load_ratio"] = sample.gpu_load_pct / 100.0
    if sample.cpu_load_pct is not None:
        body["cpu_load_ratio"] = sample.cpu_load_pct / 100.0
    body["throttled"] = dict(sample.throttling)
    if sample.power_mode is not None:
        body["power_mode"] = sample.power_mode
    return body


def ota_figures(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``ota`` field from the updater's last record (None without a usable ``state``)."""
    state = record.get("state")
    if not isinstance(state, str) or not state:
        return None
    out: dict[str, Any] = {"state": state}
    for key in ("op", "model", "reason"):
        if isinstance(record.get(key), str):
            out[key] = record[key]
    version = record.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        out["version"] = version
    return out


def stats_message(stats: PipelineStats) -> str:
    """One pipeline's stats line: fps and drops per source (with its state unless streaming),
    latency p50/p99 in total and of inference."""
    parts = [
        f"{name} {s.fps:.1f} fps, {s.dropped} dropped"
        + ("" if s.state in (None, "streaming") else f" ({s.state})")
        for name, s in stats.sources.items()
    ]
    text = f"{stats.model} {stats.precision} ×{stats.workers}: " + "; ".join(parts)
    total, infer = stats.latency_ms.get("total"), stats.latency_ms.get("infer")
    if total is not None and total.p50 is not None and total.p99 is not None:
        text += f"; latency p50/p99 {total.p50:.1f}/{total.p99:.1f} ms"
        if infer is not None and infer.p50 is not None and infer.p99 is not None:
            text += f" (infer {infer.p50:.1f}/{infer.p99:.1f})"
    return text


def energy_message(figures: Mapping[str, Any]) -> str:
    """The stats line's tail: governor state, board power, hottest temperature, fps per watt
    (each where known), from the stats record's monitor fields."""
    state = (figures.get("governor") or {}).get("state")
    text = f"; governor {state}" if state else ""
    units = (("power_w", "{:.1f} W"), ("temp_c", "{:.0f} °C"), ("fps_per_watt", "{:.2f} fps/W"))
    for key, unit in units:
        value = figures.get(key)
        if isinstance(value, (int, float)):
            text += "; " + unit.format(value)
    return text
