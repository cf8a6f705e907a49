"""The daemon's MQTT service: birth/last will, metrics, events, detections, model state,
commands and OTA messages, with an on-disk spool for everything QoS 1.

Use::

    svc = CommsService(cfg.mqtt, fleet=cfg.fleet, device_id=cfg.device_id,
                       state_dir=cfg.state_dir, control=my_control, group=None,
                       on_ota_message=ota.on_message)
    svc.start()                                  # CommsError on bad TLS files; no blocking
    svc.publish_metrics({"sources": {...}, "power_w": 7.1, ...})   # -> seq, spooled, QoS 1
    svc.publish_event("source.state", {"source": "cam0", "state": "stalled"})  # -> seq
    svc.publish_detections("cam0", [{"label": "car", "score": 0.9, "box": [...]}])  # QoS 0
    svc.set_model_state({"model": "det", "version": 3, "state": "serving"})  # retained
    svc.status()                                 # CommsStatus (.as_dict() for JSON)
    svc.close()                                  # drain briefly, retained "offline", disconnect

All ``publish_*`` calls return at once and are safe from any thread. Metrics and events are
appended to the spool (``<state_dir>/comms/spool``) first and leave it only on PUBACK, so they
survive broker outages and agent restarts (duplicates possible: ``seq`` is unique per device
across restarts, dedupe on it).
``on_ota_message(topic, payload)`` runs on the dispatcher's ``ota`` lane and the
:class:`~agent.comms.ports.Control` methods on its ``fast``/``long`` command lanes, never on
paho's network thread (:mod:`agent.comms.commands.dispatch`).
Retained OTA messages arrive again after every reconnect: the OTA handler must be idempotent.
The daemon decides whether to build the service at all (``mqtt.enabled``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.comms.boot import next_boot
from agent.comms.commands.dispatch import CommandDispatcher
from agent.comms.diagnose import ConnectDiagnosis
from agent.comms.endpoint import Will, parse_url
from agent.comms.forwarder import SpoolForwarder
from agent.comms.mqtt import MqttClient
from agent.comms.payloads import (
    detections_payload,
    event_payload,
    metrics_payload,
    model_payload,
    state_payload,
    validate_metrics,
)
from agent.comms.ports import Control, OtaMessageHandler
from agent.comms.ratelimit import RateLimiter
from agent.comms.spool import Spool
from agent.comms.topics import Topics
from agent.config.broker import MqttConfig
from agent.core.closing import Closeable
from agent.core.errors import CommsError
from agent.core.logs import log_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommsStatus:
    connected: bool
    protocol: str
    boot: int
    spooled: int
    """QoS 1 messages stored and not yet acknowledged by the broker."""
    spool_bytes: int
    dropped: int
    """Messages dropped because the spool was full."""
    sent: int
    """Spooled messages acknowledged by the broker (PUBACK) since start."""
    rejected: int
    """Messages the broker refused (MQTT 5 PUBACK failure, e.g. not authorized)."""
    appended: int
    detections_sent: int
    detections_dropped: int
    connects: int
    commands_executed: int
    commands_refused: int
    commands_busy: int
    """Requests answered ``busy`` (their lane was full)."""
    commands_rate_limited: int
    """Requests answered ``rate_limited`` (their client's token bucket was empty)."""
    commands_dropped: int
    """Requests (unreadable, no usable id) and OTA messages (lane full) dropped unanswered."""
    last_error: str | None
    expired: int = 0
    """Spooled messages dropped because they outlived ``mqtt.telemetry_expiry_s``."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CommsService(Closeable):
    """See the module docstring. Constructed cheaply; :meth:`start` does the work."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        fleet: str,
        device_id: str,
        state_dir: Path,
        control: Control | None = None,
        group: str | None = None,
        on_ota_message: OtaMessageHandler | None = None,
        version: str | None = None,
        window: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.group = group or cfg.group
        self.topics = Topics(fleet, device_id, self.group)
        self.dir = Path(state_dir) / "comms"
        self.control = control
        self.on_ota_message = on_ota_message
        self.version = version
        self.window = window
        self.clock = clock
        self.boot = 0
        self.started_at = time.monotonic()
        self.spool: Spool | None = None
        self.client: MqttClient | None = None
        self.dispatcher: CommandDispatcher | None = None
        self.forwarder: SpoolForwarder | None = None
        self._diagnosis = ConnectDiagnosis(cfg, self._on_problem)
        self._model_state: bytes | None = None
        self._det_limit = RateLimiter(cfg.detections_max_per_s)
        self._det_seq = itertools.count(1)
        self._reported_errors: set[str] = set()
        self.detections_sent = 0
        self.detections_dropped = 0
        self.last_error: str | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the spool, bump the boot counter, start the workers and connect (async)."""
        if self.client is not None:
            return
        parse_url(self.cfg.url)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.boot = next_boot(self.dir)
        spool = self.spool = Spool(self.dir / "spool", max_bytes=self.cfg.spool_max_mib << 20)
        self.dispatcher = self._new_dispatcher()
        forwarder = self.forwarder = SpoolForwarder(
            spool, window=self.window, lifetime_s=self.cfg.telemetry_expiry_s, clock=self.clock
        )
        client = self.client = self._new_client(forwarder)
        try:
            client.start()
        except CommsError:
            spool.close()
            raise
        self.dispatcher.start()
        forwarder.start(client)
        log.info(
            "comms started",
            extra=log_fields(boot=self.boot, state_topic=self.topics.state, spooled=spool.pending),
        )

    def _new_dispatcher(self) -> CommandDispatcher:
        return CommandDispatcher(
            self.control,
            device=self.device_id,
            publish=self._publish_response,
            state_dir=self.dir,
            max_payload_bytes=self.cfg.max_payload_kib * 1024,
            clock=self.clock,
            extra_info=self._ping_info,
        )

    def _ping_info(self) -> dict[str, Any]:
        return {
            "boot": self.boot,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "spooled": self.spool.pending if self.spool else 0,
        }

    def _new_client(self, forwarder: SpoolForwarder) -> MqttClient:
        subs = [(self.topics.cmd_filter, 1), (self.topics.ota, 1)]
        if self.topics.group_ota is not None:
            subs.append((self.topics.group_ota, 1))
        will = Will(
            self.topics.state,
            state_payload(
                "offline", device=self.device_id, boot=self.boot, reason="lost", group=self.group
            ),
        )
        return MqttClient(
            self.cfg,
            client_id=self.cfg.client_id or self.device_id,
            will=will,
            subscriptions=subs,
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            on_published=forwarder.on_published,
            on_connect_failed=self._diagnosis.on_connect_failed,
            max_inflight=self.window,
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain the spool briefly, publish the retained ``offline`` state, disconnect and stop
        the workers. Unsent messages stay in the spool for the next start. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        client = self.client
        if client is not None and client.connected:
            self.wait_drained(timeout_s / 2)
            client.publish_wait(
                self.topics.state,
                state_payload("offline", device=self.device_id, boot=self.boot, reason="shutdown"),
                qos=1,
                retain=True,
                timeout_s=max(0.1, deadline - time.monotonic()),
            )
        if self.forwarder is not None:
            self.forwarder.stop(max(0.1, deadline - time.monotonic()))
        if client is not None:
            client.close(max(0.1, deadline - time.monotonic()))
        if self.dispatcher is not None:
            self.dispatcher.close(max(0.1, deadline - time.monotonic()))
        if self.spool is not None:
            self.spool.close()
        log.info("comms closed", extra=log_fields(spooled=self.spool.pending if self.spool else 0))

    # ------------------------------------------------------------------ publishing API

    def publish_metrics(self, metrics: dict[str, Any]) -> int:
        """Spool and send one metrics payload (QoS 1); returns its ``seq``. Raises
        :class:`CommsError` when ``metrics`` has fields the schema does not know."""
        ts = round(self.clock(), 3)
        body = validate_metrics(metrics)
        return self._spool(
            self.topics.metrics,
            lambda seq: metrics_payload(
                body, device=self.device_id, boot=self.boot, seq=seq, ts=ts, validate=False
            ),
        )

    def publish_event(self, kind: str, data: dict[str, Any]) -> int:
        """Spool and send one event (QoS 1); returns its ``seq``."""
        ts = round(self.clock(), 3)
        event_payload(kind, {}, device=self.device_id, boot=self.boot, seq=0, ts=ts)  # validate
        return self._spool(
            self.topics.events,
            lambda seq: event_payload(
                kind, data, device=self.device_id, boot=self.boot, seq=seq, ts=ts
            ),
        )

    def publish_detections(
        self, source: str, detections: list[dict[str, Any]], frame_ts: float | None = None
    ) -> bool:
        """Send one frame's detections (QoS 0, not spooled) if enabled, connected and within
        ``detections_max_per_s``; returns whether it went out."""
        client = self.client
        if not self.cfg.detections_enabled or client is None or not client.connected:
            self.detections_dropped += 1
            return False
        if not self._det_limit.take():
            self.detections_dropped += 1
            return False
        payload = detections_payload(
            source,
            detections,
            device=self.device_id,
            seq=next(self._det_seq),
            ts=round(self.clock(), 3),
            frame_ts=frame_ts,
        )
        if client.publish(self.topics.detections, payload, qos=0) is None:
            self.detections_dropped += 1
            return False
        self.detections_sent += 1
        return True

    def set_model_state(self, state: dict[str, Any]) -> None:
        """Publish the retained ``.../model`` state now, and again after every reconnect."""
        self._model_state = model_payload(state, device=self.device_id, ts=round(self.clock(), 3))
        client = self.client
        if client is not None and client.connected:
            client.publish(self.topics.model, self._model_state, qos=1, retain=True)

    def status(self) -> CommsStatus:
        spool, client, disp, fwd = self.spool, self.client, self.dispatcher, self.forwarder
        return CommsStatus(
            connected=bool(client and client.connected),
            protocol=client.protocol if client else self.cfg.protocol,
            boot=self.boot,
            spooled=spool.pending if spool else 0,
            spool_bytes=spool.total_bytes if spool else 0,
            dropped=spool.dropped if spool else 0,
            sent=fwd.sent if fwd else 0,
            rejected=fwd.rejected if fwd else 0,
            appended=spool.appended if spool else 0,
            detections_sent=self.detections_sent,
            detections_dropped=self.detections_dropped,
            connects=client.connects if client else 0,
            commands_executed=disp.executed if disp else 0,
            commands_refused=disp.refused if disp else 0,
            commands_busy=disp.busy if disp else 0,
            commands_rate_limited=disp.rate_limited if disp else 0,
            commands_dropped=sum(disp.dropped.values()) if disp else 0,
            last_error=self.last_error or (client.last_error if client else None),
            expired=fwd.expired if fwd else 0,
        )

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait (bounded) until the spool holds nothing unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.spool is None or self.spool.pending == 0:
                return True
            if self.forwarder is not None:
                self.forwarder.wait(0.02)
        return self.spool is None or self.spool.pending == 0

    # ------------------------------------------------------------------ internals

    def _spool(self, topic: str, make: Callable[[int], bytes]) -> int:
        if self.spool is None or self._closed:
            raise CommsError("comms service is not running", fix="call start() before publishing")
        seq = self.spool.append(topic, make, qos=1)
        self._wake()
        return seq

    def _wake(self) -> None:
        if self.forwarder is not None:
            self.forwarder.wake()

    def _publish_response(self, payload: bytes) -> None:
        if self.client is not None:
            self.client.publish(self.topics.cmd_response, payload, qos=1)

    def _on_problem(self, problem: str) -> None:
        """A connect diagnosis found ``problem``: remember it; a config problem is an event."""
        self.last_error = problem
        log.error("mqtt cannot connect", extra=log_fields(error=problem))
        transient = problem.startswith("cannot reach")  # only config problems are events
        if not transient and problem not in self._reported_errors and not self._closed:
            self._reported_errors.add(problem)
            self.publish_event("comms.error", {"error": problem})

    # paho-thread callbacks: only bookkeeping and enqueueing

    def _on_connected(self) -> None:
        client = self.client
        assert client is not None
        client.publish(
            self.topics.state,
            state_payload(
                "online",
                device=self.device_id,
                boot=self.boot,
                version=self.version,
                group=self.group,
            ),
            qos=1,
            retain=True,
        )
        if self._model_state is not None:
            client.publish(self.topics.model, self._model_state, qos=1, retain=True)
        self.last_error = None
        self._wake()

    def _on_disconnected(self, reason: str) -> None:
        self._wake()

    def _on_message(self, topic: str, payload: bytes) -> None:
        disp = self.dispatcher
        if disp is None:
            return
        name = self.topics.command_name(topic)
        if name is not None:
            disp.submit(name, payload)
            return
        if self.topics.is_ota(topic) and self.on_ota_message is not None:
            handler = self.on_ota_message
            if len(payload) > self.cfg.max_payload_kib * 1024:
                disp.drop("ota", "ota_too_large", size=len(payload))
                return

            def deliver() -> None:
                try:
                    handler(topic, payload)
                except Exception:
                    log.exception("ota handler failed", extra=log_fields(topic=topic))

            disp.call_soon("ota", deliver, len(payload))
