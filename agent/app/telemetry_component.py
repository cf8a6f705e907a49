"""Telemetry as a daemon component: the ``metrics`` payload every ``telemetry.interval_s`` (the
profile's) to MQTT and the optional Prometheus endpoint, daemon events to ``events``, and the
pipeline sink that sends detections. The MQTT service and the exporter are built outside
(:mod:`agent.app.service`); nothing here imports paho or prometheus_client.

The metrics timer has a random phase: the first report goes out ``uniform(0, interval)`` after
the first tick, then every interval on that phase, so a fleet restarted together (a power cut)
does not report in lockstep. It runs on the daemon's clock, not the broker connection: a
reconnect sends the retained birth at once but does not move the timer (what was spooled
while offline is replayed by the comms service)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from agent.app.events import EventBus
from agent.app.metrics import ota_figures
from agent.comms.prometheus import PrometheusExporter
from agent.comms.service import CommsService
from agent.config.device import DeviceProfile
from agent.core.errors import EdgeAgentError
from agent.core.lifecycle import Health
from agent.core.logs import log_fields
from agent.pipeline.frames import Result

log = logging.getLogger(__name__)

PublishDetections = Callable[[str, list[dict[str, Any]], float], bool]


class DetectionsSink:
    """Pipeline sink → the rate-limited ``detections`` topic (only results with boxes)."""

    def __init__(self, publish: PublishDetections) -> None:
        self._publish = publish

    def write(self, result: Result) -> None:
        if not result.detections:
            return
        dets = result.to_json()["detections"]
        self._publish(result.source, dets, result.wall_time)

    def close(self) -> None:
        return None


class TelemetryComponent:
    """MQTT (metrics, events, detections; commands and OTA messages are the service's) and
    Prometheus. ``metrics()`` is the payload body; ``profile()`` the profile in force (a
    reload or set-profile may change the interval)."""

    name = "telemetry"

    def __init__(
        self,
        service: CommsService | None,
        exporter: PrometheusExporter | None,
        *,
        events: EventBus,
        metrics: Callable[[], dict[str, Any]],
        profile: Callable[[], DeviceProfile | None],
        interval_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.exporter = exporter
        self.events = events
        self.metrics = metrics
        self.profile = profile
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self._next: float | None = None
        self._published = 0
        self._errors = 0
        self._ota: dict[str, Any] | None = None

    def start(self) -> None:
        if self.service is not None:
            self.service.start()
        if self.exporter is not None:
            self.exporter.start()
        self.events.subscribe(self.on_event)

    def detections_sink(self) -> DetectionsSink | None:
        service = self.service
        if service is None or not service.cfg.detections_enabled:
            return None
        return DetectionsSink(
            lambda src, dets, ts: service.publish_detections(src, dets, frame_ts=ts)
        )

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if self.service is None:
            return
        try:
            self.service.publish_event(kind, data)
        except EdgeAgentError as exc:
            self._errors += 1
            log.warning("event not published: %s", exc, extra=log_fields(event="telemetry"))

    def set_model_state(self, record: dict[str, Any]) -> None:
        self._ota = ota_figures(record)
        if self.service is not None:
            self.service.set_model_state(record)

    def tick(self, now: float) -> None:
        profile = self.profile()
        if profile is not None:
            self.interval_s = profile.telemetry.interval_s
        if self._next is None:  # the random phase of this device's reports
            self._next = now + self._rng.uniform(0.0, self.interval_s)
        if now < self._next and self._next - now <= self.interval_s:
            return
        keep_phase = self._next + self.interval_s
        in_step = now < keep_phase <= now + self.interval_s
        self._next = keep_phase if in_step else now + self.interval_s
        self.publish_now()

    def publish_now(self) -> None:
        body = self.metrics()
        if self.service is not None:
            st = self.service.status()
            body["comms"] = {
                "spooled": st.spooled, "dropped": st.dropped, "sent": st.sent,
                "expired": st.expired,
            }  # fmt: skip
        if self._ota is not None:
            body["ota"] = dict(self._ota)
        if self.exporter is not None:
            self.exporter.update(body)
        if self.service is not None:
            try:
                self.service.publish_metrics(body)
                self._published += 1
            except EdgeAgentError as exc:
                self._errors += 1
                log.warning("metrics not published: %s", exc, extra=log_fields(event="telemetry"))

    def health(self) -> Health:
        return Health()

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics_published": self._published, "errors": self._errors}
        if self.service is not None:
            out["mqtt"] = self.service.status().as_dict()
        if self.exporter is not None:
            out["prometheus_port"] = self.exporter.port
        return out

    def stop(self, timeout: float) -> None:
        self.events.unsubscribe(self.on_event)
        if self.service is not None:
            self.service.close(timeout_s=max(0.5, timeout))
        if self.exporter is not None:
            self.exporter.close()
