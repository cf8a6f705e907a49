"""What one simulated device writes on the broker, built with the daemon's own payload
builders (:mod:`agent.comms.payloads`): birth (with the device's group), clean shutdown and
the will, metrics, the update record (``model`` + ``ota.state`` event) and command responses."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from agent.comms.endpoint import Will
from agent.comms.mqtt import MqttClient
from agent.comms.payloads import (
    SCHEMA_METRICS_V1,
    event_payload,
    metrics_payload,
    model_payload,
    response_payload,
    state_payload,
)
from agent.comms.topics import Topics

__all__ = ["DeviceWire", "birth_payload"]


def birth_payload(device: str, boot: int, group: str | None) -> bytes:
    """Retained ``state`` ``online``, plus the optional ``group`` field when the device has
    one (a new optional field: the ``state/1`` major is unchanged)."""
    raw = state_payload("online", device=device, boot=boot, version="sim")
    if group is None:
        return raw
    doc: dict[str, Any] = json.loads(raw)
    doc["group"] = group
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class DeviceWire:
    """The publishing side of one device's session. ``client`` is swapped when the device
    reconnects with a fresh session; a publish while it is closed is dropped (a simulated
    device does not spool)."""

    def __init__(self, device: str, topics: Topics, boot: int) -> None:
        self.device = device
        self.topics = topics
        self.boot = boot
        self.client: MqttClient | None = None
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def seq(self) -> int:
        return self._seq

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        client = self.client
        if client is not None:
            client.publish(topic, payload, qos=1, retain=retain)

    def will(self) -> Will:
        """What the broker publishes when the session dies without a clean disconnect."""
        return Will(self.topics.state, self.offline_payload("lost"))

    def offline_payload(self, reason: str) -> bytes:
        return state_payload("offline", device=self.device, boot=self.boot, reason=reason)

    def birth(self, group: str | None) -> None:
        self._publish(self.topics.state, birth_payload(self.device, self.boot, group), True)

    def offline(self, reason: str, timeout_s: float = 2.0) -> bool:
        """Retained ``offline`` with ``reason``, waiting (bounded) for the broker's ack."""
        client = self.client
        if client is None or not client.connected:
            return False
        payload = self.offline_payload(reason)
        return client.publish_wait(self.topics.state, payload, 1, True, timeout_s=timeout_s)

    def record(self, record: dict[str, Any]) -> None:
        """The update record: retained on ``model`` and as an ``ota.state`` event."""
        self.model(record)
        self.event("ota.state", record)

    def model(self, record: dict[str, Any]) -> None:
        """The retained ``model`` record alone (re-published on every connection)."""
        payload = model_payload(record, device=self.device, ts=time.time())
        self._publish(self.topics.model, payload, True)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        payload = event_payload(
            kind, data, device=self.device, boot=self.boot, seq=self._next_seq(), ts=time.time()
        )
        self._publish(self.topics.events, payload)

    def metrics(self, body: dict[str, Any]) -> None:
        payload = metrics_payload(  # v1: the simulated fleet stands for agents not yet upgraded
            body,
            device=self.device,
            boot=self.boot,
            seq=self._next_seq(),
            ts=round(time.time(), 3),
            schema=SCHEMA_METRICS_V1,
        )
        self._publish(self.topics.metrics, payload)

    def respond(
        self,
        request_id: str | None,
        name: str,
        *,
        result: Any = None,
        code: str | None = None,
        error: str | None = None,
    ) -> None:
        payload = response_payload(
            request_id=request_id,
            command=name,
            device=self.device,
            ok=code is None,
            result=result,
            error_code=code,
            error=error,
        )
        self._publish(self.topics.cmd_response, payload)
