"""A blocking one-shot publish for the fleet-side tools (``edge-agent push``)."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.comms.diagnose import (
    connect_error,
    connection_refused_error,
    message_refused_error,
    no_ack_error,
    no_connack_error,
)
from agent.comms.endpoint import parse_url
from agent.comms.mqtt.factory import UNSUPPORTED_PROTOCOL, new_paho, protocol_of, release
from agent.comms.tls import tls_context
from agent.config.broker import MqttConfig
from agent.core.errors import CommsError


class _OneShot:
    """One connection attempt of :func:`publish_once` with one protocol version."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        protocol: MQTTProtocolVersion,
        ctx: ssl.SSLContext | None,
        timeout_s: float,
    ) -> None:
        self.client = new_paho(cfg, client_id, protocol, ctx)
        self.client.connect_timeout = max(0.5, timeout_s)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.keepalive = max(5, cfg.keepalive_s)
        self.connack: ReasonCode | None = None
        self.ack: ReasonCode | None = None
        self.got_connack = threading.Event()
        self.got_ack = threading.Event()

    def _on_connect(self, c: paho.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        self.connack = rc
        self.got_connack.set()

    def _on_publish(self, c: paho.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        self.ack = rc
        self.got_ack.set()

    def connect(self, host: str, port: int) -> None:
        try:
            self.client.connect(host, port, keepalive=self.keepalive)
        except OSError as err:  # ssl errors are OSErrors too
            raise connect_error(err, host, port) from err
        self.client.loop_start()

    def wait_connack(self, deadline: float, where: str, timeout_s: float) -> ReasonCode:
        if not self.got_connack.wait(max(0.0, deadline - time.monotonic())):
            raise no_connack_error(where, timeout_s)
        assert self.connack is not None
        return self.connack

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        deadline: float,
        timeout_s: float,
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        if qos > 0 and not self.got_ack.wait(max(0.0, deadline - time.monotonic())):
            raise no_ack_error(topic, timeout_s)
        if self.ack is not None and self.ack.is_failure:
            raise message_refused_error(topic, str(self.ack))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        release(self.client)


def publish_once(
    cfg: MqttConfig,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    client_id: str | None = None,
    timeout_s: float | None = None,
) -> None:
    """Connect, publish one message, wait for the broker's acknowledgement, disconnect.

    Raises :class:`CommsError` (with a fix) when the broker cannot be reached, refuses the
    connection or the message (MQTT 5 PUBACK reason code), or does not answer in ``timeout_s``
    (default: ``mqtt.publish_timeout_s``).
    """
    if timeout_s is None:
        timeout_s = cfg.publish_timeout_s
    if qos not in (0, 1, 2):
        raise CommsError(f"qos {qos} is not 0, 1 or 2", fix="use qos 0, 1 or 2")
    host, port, _ = parse_url(cfg.url)
    ctx = tls_context(cfg)
    protocols = [protocol_of(cfg)]
    if cfg.protocol == "auto":
        protocols.append(MQTTProtocolVersion.MQTTv311)
    cid = client_id or f"edge-agent-push-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout_s
    for protocol in protocols:
        shot = _OneShot(cfg, cid, protocol, ctx, timeout_s)
        shot.connect(host, port)
        try:
            rc = shot.wait_connack(deadline, f"{host}:{port}", timeout_s)
            if rc.is_failure:
                if rc.value == UNSUPPORTED_PROTOCOL and protocol is not protocols[-1]:
                    continue
                raise connection_refused_error(str(rc))
            shot.publish(
                topic, payload, qos=qos, retain=retain, deadline=deadline, timeout_s=timeout_s
            )
            return
        finally:
            shot.close()
    raise CommsError("could not publish", fix="check the broker")  # pragma: no cover
