"""Optional Prometheus endpoint (the only module importing prometheus_client).

:class:`PrometheusExporter` serves ``/metrics`` on ``host:port`` (loopback by default) from its
own registry, never the global one. :meth:`~PrometheusExporter.update` takes the same dict the
daemon passes to ``CommsService.publish_metrics`` (see docs/telemetry.md) and sets the gauges.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from agent.config.agent import PrometheusConfig
from agent.core.closing import Closeable
from agent.core.errors import CommsError
from agent.core.logs import log_fields

log = logging.getLogger(__name__)


class PrometheusExporter(Closeable):
    """``/metrics`` with gauges named ``edge_agent_*``; labels per source, stage, zone."""

    def __init__(self, cfg: PrometheusConfig, *, device: str) -> None:
        self.cfg = cfg
        self.device = device
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.source_fps = Gauge(
            "edge_agent_source_fps", "Frames/s per source", ["source"], registry=r
        )
        self.source_latency = Gauge(
            "edge_agent_source_latency_ms",
            "Latency percentile per source, ms",
            ["source", "quantile"],
            registry=r,
        )
        self.source_drops = Gauge(
            "edge_agent_source_drops", "Frames dropped since start", ["source"], registry=r
        )
        self.source_frames = Gauge(
            "edge_agent_source_frames", "Frames served since start", ["source"], registry=r
        )
        self.source_state = Gauge(
            "edge_agent_source_state", "1 for the source's current state", ["source", "state"],
            registry=r,
        )  # fmt: skip
        self.stage_ms = Gauge("edge_agent_stage_ms", "Median stage time, ms", ["stage"], registry=r)
        self.power_w = Gauge("edge_agent_power_watts", "Board input power, W", registry=r)
        self.temp_c = Gauge("edge_agent_temperature_celsius", "Thermal zone", ["zone"], registry=r)
        self.mem_used = Gauge("edge_agent_memory_used_mib", "Used memory, MiB", registry=r)
        self.mem_total = Gauge("edge_agent_memory_total_mib", "Total memory, MiB", registry=r)
        self.gpu_load = Gauge("edge_agent_gpu_load_percent", "GPU load, %", registry=r)
        self.fps_per_w = Gauge("edge_agent_fps_per_watt", "Total fps / power", registry=r)
        self.uptime = Gauge("edge_agent_uptime_seconds", "Agent uptime", registry=r)
        self.model = Gauge(
            "edge_agent_model_info", "1 for the serving model", ["model", "version", "precision",
            "engine_hash"], registry=r,
        )  # fmt: skip
        self.governor = Gauge(
            "edge_agent_governor_state", "1 for the governor's current state", ["state"],
            registry=r,
        )  # fmt: skip
        self.governor_workers = Gauge(
            "edge_agent_governor_workers", "Worker streams allowed", registry=r
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Bind and serve; CommsError when the port is taken."""
        try:
            self._server, self._thread = start_http_server(
                self.cfg.port, addr=self.cfg.host, registry=self.registry
            )
        except OSError as err:
            raise CommsError(
                f"cannot serve Prometheus metrics on {self.cfg.host}:{self.cfg.port}: {err}",
                fix="choose a free metrics.port or disable metrics.enabled",
            ) from err
        log.info("prometheus endpoint up", extra=log_fields(host=self.cfg.host, port=self.port))

    @property
    def port(self) -> int:
        return int(self._server.server_port) if self._server is not None else self.cfg.port

    def update(self, metrics: dict[str, Any]) -> None:
        """Set the gauges from a metrics dict; stale per-source/zone series are removed."""
        with self._lock:
            self._update(metrics)

    def _update(self, m: dict[str, Any]) -> None:
        for gauge in (
            self.source_fps,
            self.source_latency,
            self.source_drops,
            self.source_frames,
            self.source_state,
            self.stage_ms,
            self.temp_c,
            self.model,
            self.governor,
        ):
            gauge.clear()
        for name, src in (m.get("sources") or {}).items():
            self.source_fps.labels(name).set(float(src.get("fps", 0.0)))
            self.source_drops.labels(name).set(float(src.get("drops", 0)))
            self.source_frames.labels(name).set(float(src.get("frames", 0)))
            if src.get("state"):
                self.source_state.labels(name, str(src["state"])).set(1)
            for q, value in (src.get("latency_ms") or {}).items():
                if value is not None:
                    self.source_latency.labels(name, q).set(float(value))
        for stage, value in (m.get("stages_ms") or {}).items():
            self.stage_ms.labels(stage).set(float(value))
        for zone, value in (m.get("temperatures_c") or {}).items():
            self.temp_c.labels(zone).set(float(value))
        for key, gauge in (
            ("power_w", self.power_w),
            ("gpu_load_pct", self.gpu_load),
            ("fps_per_w", self.fps_per_w),
            ("uptime_s", self.uptime),
        ):
            if m.get(key) is not None:
                gauge.set(float(m[key]))
        mem = m.get("memory") or {}
        if mem.get("used_mib") is not None:
            self.mem_used.set(float(mem["used_mib"]))
        if mem.get("total_mib") is not None:
            self.mem_total.set(float(mem["total_mib"]))
        model = m.get("model")
        if model:
            self.model.labels(
                str(model.get("name", "")),
                str(model.get("version", "")),
                str(model.get("precision", "")),
                str(model.get("engine_hash", "")),
            ).set(1)
        gov = m.get("governor")
        if gov:
            self.governor.labels(str(gov.get("state", ""))).set(1)
            if gov.get("workers") is not None:
                self.governor_workers.set(float(gov["workers"]))

    def close(self) -> None:
        """Stop the HTTP server and free the port (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
