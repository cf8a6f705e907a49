"""Optional Prometheus endpoint (the only package importing prometheus_client on the device).

:class:`PrometheusExporter` serves ``/metrics`` on ``host:port`` (loopback by default) from its
own registry, never the global one. :meth:`~PrometheusExporter.update` takes the same dict the
daemon passes to ``CommsService.publish_metrics`` (the ``metrics/2`` body, docs/telemetry.md);
a collector turns the latest one into series at scrape time (:mod:`.families`), so a reading
the body lacks is absent from the scrape and series of a gone source or zone vanish with it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from agent.comms.prometheus.families import snapshot_families
from agent.config.agent import PrometheusConfig
from agent.core.closing import Closeable
from agent.core.errors import CommsError
from agent.core.logs import log_fields

__all__ = ["PrometheusExporter", "SnapshotCollector", "snapshot_families"]

log = logging.getLogger(__name__)


class SnapshotCollector(Collector):
    """Yields the families of the latest metrics body (nothing before the first one)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._body: dict[str, Any] | None = None
        self._taken_at: float | None = None

    def set(self, body: dict[str, Any]) -> None:
        snapshot = copy.deepcopy(body)
        with self._lock:
            self._body, self._taken_at = snapshot, self._clock()

    def describe(self) -> Iterable[Metric]:
        return []  # the series depend on the body: nothing to describe ahead of a scrape

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            body, taken_at = self._body, self._taken_at
        return [] if body is None else snapshot_families(body, taken_at=taken_at)


class PrometheusExporter(Closeable):
    """``/metrics`` with series named ``edge_agent_*`` from the latest metrics body."""

    def __init__(
        self, cfg: PrometheusConfig, *, device: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = SnapshotCollector(clock)
        self.registry.register(self.collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None

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
        """Serve ``metrics`` (a ``metrics/2`` body) from now on."""
        self.collector.set(metrics)

    def close(self) -> None:
        """Stop the HTTP server and free the port (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
