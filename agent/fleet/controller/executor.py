"""Rollout actions → MQTT: the controller's only writes to devices.

* :class:`~agent.fleet.rollout.actions.PublishManifest` → the device's signed manifest text (as
  stored when the rollout started) on ``edge/<fleet>/<device>/ota``, retained, QoS 1;
* :class:`~agent.fleet.rollout.actions.ClearManifest` → an empty retained payload on that topic
  (the broker drops the retained message);
* :class:`~agent.fleet.rollout.actions.SendRollback` → a ``rollback-model`` command request
  ``{"id", "ts", "ttl_s", "client", "args": {"model"}}`` on ``.../cmd/rollback-model``.

Publishing never blocks: a QoS 1 message queued while the broker link is down is sent by the
client on reconnect. A publish the client refuses outright is counted and logged.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agent.comms.topics import Topics, device_ota_topic
from agent.core.logs import log_fields
from agent.fleet.rollout.actions import Action, ClearManifest, PublishManifest, SendRollback

__all__ = ["COMMAND_TTL_S", "ActionExecutor", "Publisher", "rollback_request"]

log = logging.getLogger(__name__)

COMMAND_TTL_S = 300
ROLLBACK_COMMAND = "rollback-model"


class Publisher(Protocol):
    """:class:`agent.comms.mqtt.MqttClient`'s publish (None = refused)."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> object | None: ...


def rollback_request(model: str, *, client: str, now: float) -> bytes:
    """The ``rollback-model`` command request (``docs/telemetry.md``, commands)."""
    doc: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "ts": now,
        "ttl_s": COMMAND_TTL_S,
        "client": client,
        "args": {"model": model},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class ActionExecutor:
    """Carries out one rollout's actions; ``manifest(rollout_id, device)`` reads the store."""

    def __init__(
        self,
        publisher: Publisher,
        fleet: str,
        client_id: str,
        manifest: Callable[[str, str], str | None],
    ) -> None:
        self.publisher = publisher
        self.fleet = fleet
        self.client_id = client_id
        self.manifest = manifest
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def execute(self, rollout_id: str, actions: Sequence[Action], now: float) -> None:
        for action in actions:
            ok = self._one(rollout_id, action, now)
            label = type(action).__name__
            self._count(label if ok else f"{label}.failed")
            if not ok:
                log.warning(
                    "rollout action not sent",
                    extra=log_fields(rollout=rollout_id, action=label, device=action.device),
                )

    def _one(self, rollout_id: str, action: Action, now: float) -> bool:
        topic = device_ota_topic(self.fleet, action.device)
        if isinstance(action, PublishManifest):
            text = self.manifest(rollout_id, action.device)
            if text is None:
                log.error(
                    "no stored manifest for a rollout device",
                    extra=log_fields(rollout=rollout_id, device=action.device),
                )
                return False
            return self._publish(topic, text.encode(), retain=True)
        if isinstance(action, ClearManifest):
            return self._publish(topic, b"", retain=True)
        if isinstance(action, SendRollback):  # pyright: ignore[reportUnnecessaryIsInstance]
            command = Topics(self.fleet, action.device).cmd(ROLLBACK_COMMAND)
            payload = rollback_request(action.model, client=self.client_id, now=now)
            return self._publish(command, payload, retain=False)
        raise TypeError(f"unknown rollout action {action!r}")  # pragma: no cover

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> bool:
        return self.publisher.publish(topic, payload, qos=1, retain=retain) is not None

    def _count(self, label: str) -> None:
        with self._lock:
            self._counts[label] += 1
