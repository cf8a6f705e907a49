"""The controller's ``GET /metrics``: the fleet in the Prometheus text format.

Written with ``prometheus_client`` (a private :class:`CollectorRegistry` and one custom
collector, so nothing of the process-global registry leaks in). Series (base units, ``_total``
counters, per-device series labelled by ``device`` only, plus what each one names):

* ``edge_agent_fleet_devices{status}`` — devices online / offline / degraded (all of them);
* ``edge_agent_fleet_device_up{device,group}``, ``..._last_seen_timestamp_seconds{device}``,
  ``..._fps``, ``..._latency_seconds{quantile="0.5"|"0.99"}`` (typed ``summary`` with the
  device's quantiles only, no ``_sum``/``_count``: a quantile label on a gauge fails
  ``promtool check metrics``), ``..._power_watts``,
  ``..._temperature_celsius`` (hottest zone), ``..._memory_used_ratio`` (0..1),
  ``..._model_info{model,version,precision}`` = 1, ``..._ota_state{state}`` = 1;
* ``edge_agent_fleet_rollout_devices{rollout,state}`` — device counts of running/paused rollouts;
* ``edge_agent_fleet_ingest_messages_total{outcome}``, ``edge_agent_fleet_ingest_dropped_total``.

A reading the device did not report has no sample (never 0). Per-device series cover at most
``metrics.max_devices`` devices (the first by id); the fleet-wide counts cover all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "FleetCollector", "FleetSample", "exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format every Prometheus version scrapes (what ``generate_latest`` writes)."""
P = "edge_agent_fleet_"
OUTCOMES = ("applied", "duplicate", "stale", "rejected", "ignored")
STATUSES = ("online", "offline", "degraded")


@dataclass(frozen=True)
class FleetSample:
    """What one scrape reads: device answers (as ``GET /api/devices``), busy rollouts' status,
    the ingest's counts by outcome and the messages the intake dropped."""

    devices: list[dict[str, Any]]
    rollouts: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    ingest: dict[str, int] = field(default_factory=dict[str, int])
    dropped: int = 0
    max_devices: int = 5000


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, labels=labels)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


_SIMPLE = (
    ("device_fps", "Frames per second served (all sources).", "fps", 1.0),
    ("device_power_watts", "Board power.", "power_w", 1.0),
    ("device_temperature_celsius", "Hottest thermal zone.", "temp_max_c", 1.0),
    ("device_memory_used_ratio", "Memory used (0..1).", "memory_used_pct", 0.01),
)
"""(series, help, device answer field, scale) of the per-device readings."""
_QUANTILES = (("0.5", "latency_p50_ms"), ("0.99", "latency_p99_ms"))
_MODEL_KEYS = ("model_name", "model_version", "model_precision")


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def _readings(devices: list[dict[str, Any]]) -> list[Metric]:
    simple = [(_gauge(name, doc, ["device"]), key, scale) for name, doc, key, scale in _SIMPLE]
    latency = Metric(P + "device_latency_seconds", "Frame latency (worst source).", "summary")
    for d in devices:
        dev = str(d["device"])
        for family, key, scale in simple:
            if (value := _number(d.get(key))) is not None:
                family.add_metric([dev], value * scale)
        for quantile, key in _QUANTILES:
            if (value := _number(d.get(key))) is not None:
                labels = {"device": dev, "quantile": quantile}
                latency.add_sample(P + "device_latency_seconds", labels, value / 1000.0)
    return [*(family for family, _, _ in simple), latency]


def _identity(devices: list[dict[str, Any]]) -> list[Metric]:
    up = _gauge("device_up", "1 when the device is online.", ["device", "group"])
    seen = _gauge("device_last_seen_timestamp_seconds", "Last message (Unix time).", ["device"])
    model = _gauge(
        "device_model_info", "The served model.", ["device", "model", "version", "precision"]
    )
    ota = _gauge("device_ota_state", "1 for the current OTA state.", ["device", "state"])
    for d in devices:
        dev = str(d["device"])
        up.add_metric([dev, _label(d.get("group"))], 1.0 if d["online"] else 0.0)
        seen.add_metric([dev], float(d["last_seen"]))
        if d.get("model_name") is not None:
            model.add_metric([dev, *(_label(d.get(k)) for k in _MODEL_KEYS)], 1.0)
        if d.get("ota_state") is not None:
            ota.add_metric([dev, str(d["ota_state"])], 1.0)
    return [up, seen, model, ota]


def _fleet_metrics(sample: FleetSample) -> list[Metric]:
    counts = _gauge("devices", "Devices by status.", ["status"])
    for status in STATUSES:
        counts.add_metric([status], float(sum(1 for d in sample.devices if d["status"] == status)))
    rollout = _gauge(
        "rollout_devices", "Devices of running/paused rollouts by state.", ["rollout", "state"]
    )
    for status in sample.rollouts:
        for state, n in sorted(dict(status.get("counts") or {}).items()):
            rollout.add_metric([str(status["id"]), str(state)], float(n))
    messages = CounterMetricFamily(
        P + "ingest_messages", "Device messages by outcome.", labels=["outcome"]
    )
    for outcome in OUTCOMES:
        messages.add_metric([outcome], float(sample.ingest.get(outcome, 0)))
    dropped = CounterMetricFamily(P + "ingest_dropped", "Device messages dropped (queue full).")
    dropped.add_metric([], float(sample.dropped))
    return [counts, rollout, messages, dropped]


class FleetCollector(Collector):
    """Reads one :class:`FleetSample` per scrape."""

    def __init__(self, sample: Callable[[], FleetSample]) -> None:
        self.sample = sample

    def collect(self) -> Iterator[Metric]:
        sample = self.sample()
        yield from _fleet_metrics(sample)
        devices = sample.devices[: sample.max_devices]
        yield from _identity(devices)
        yield from _readings(devices)


def exposition(sample: Callable[[], FleetSample]) -> bytes:
    """The text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(sample))
    return generate_latest(registry)
