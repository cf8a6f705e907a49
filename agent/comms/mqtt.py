"""The MQTT transport: the only module that imports paho (paho-mqtt >= 2, callback API v2).

:class:`MqttClient` wraps one paho client running its own network thread (``connect_async`` +
``loop_start``). Its callbacks only check reason codes and hand events to the owner's
callbacks, which must themselves only enqueue. A session counts as connected only after a
successful CONNACK; subscriptions are (re)made in ``on_connect``. Reconnects back off
exponentially from ``reconnect_min_s`` to ``reconnect_max_s`` with jitter
(:mod:`agent.comms.backoff`). ``protocol: auto`` tries MQTT 5 and rebuilds the client for 3.1.1
when the broker refuses version 5.

:func:`publish_once` is a blocking one-shot publish for the fleet-side ``edge-agent push``.
URL parsing, TLS and failure diagnosis live beside this module (endpoint, tls, diagnose).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.comms.backoff import jittered_base_s
from agent.comms.diagnose import (
    connect_error,
    connection_refused_error,
    message_refused_error,
    no_ack_error,
    no_connack_error,
)
from agent.comms.endpoint import Will, parse_url
from agent.comms.tls import tls_context
from agent.config.broker import MqttConfig
from agent.core.closing import Closeable
from agent.core.errors import CommsError
from agent.core.logs import log_fields
from agent.core.redact import redact_text

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # CONNACK "Unsupported protocol version" (paho maps v3 rc=1 to it)


def _protocol_of(cfg: MqttConfig) -> MQTTProtocolVersion:
    return MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5


def _new_paho(
    cfg: MqttConfig, client_id: str, protocol: MQTTProtocolVersion, ctx: ssl.SSLContext | None
) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=True if protocol != MQTTProtocolVersion.MQTTv5 else None,
    )
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if ctx is not None:
        client.tls_set_context(ctx)
        if not ctx.check_hostname:
            client.tls_insecure_set(True)
    return client


class MqttClient(Closeable):
    """One broker session, kept alive in the background.

    Callbacks (all run on paho's thread, so they must only enqueue):
    ``on_connected()`` after a successful CONNACK (subscriptions already requested),
    ``on_disconnected(reason)``, ``on_message(topic, payload)``,
    ``on_published(mid, ok, reason)`` when the broker acknowledged (QoS 1) or paho sent (QoS 0).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        will: Will | None = None,
        subscriptions: list[tuple[str, int]] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        on_published: Callable[[int, bool, str], None] | None = None,
        on_connect_failed: Callable[[], None] | None = None,
        max_inflight: int = 256,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.will = will
        self.subscriptions = list(subscriptions or [])
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_published = on_published
        self._on_connect_failed = on_connect_failed
        self.max_inflight = max_inflight
        self.host, self.port, _ = parse_url(cfg.url)
        self._ctx: ssl.SSLContext | None = None
        self._protocol = _protocol_of(cfg)
        self._client: paho.Client | None = None
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._closed = False
        self.epoch = 0
        """Incremented whenever the paho client is rebuilt (its in-flight messages are gone)."""
        self.connects = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Check the TLS files, then connect in the background (returns at once)."""
        self._ctx = tls_context(self.cfg)
        with self._lock:
            self._build()

    def _build(self) -> None:
        client = _new_paho(self.cfg, self.client_id, self._protocol, self._ctx)
        client.max_inflight_messages_set(self.max_inflight)
        client.reconnect_delay_set(
            min_delay=cast(int, self.cfg.reconnect_min_s),  # paho accepts float seconds
            max_delay=cast(int, self.cfg.reconnect_max_s),
        )
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_connect_fail = self._paho_connect_fail
        self._client = client
        self.epoch += 1
        client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_s)
        client.loop_start()
        log.info(
            "mqtt connecting",
            extra=log_fields(
                url=redact_text(self.cfg.url),
                client_id=self.client_id,
                protocol=self.protocol,
            ),
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and stop the network thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.disconnect()
        deadline = time.monotonic() + timeout_s
        while self._connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> paho.MQTTMessageInfo | None:
        """Queue one message (never blocks). Returns paho's info (``.mid``), or None when the
        client is not running or paho refused it; a QoS>0 message queued while the link is
        down is sent by paho on reconnect."""
        client = self._client
        if client is None or self._closed:
            return None
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return None
        return info

    def publish_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *, timeout_s: float
    ) -> bool:
        """Publish and wait (bounded) until paho reports it sent/acknowledged."""
        info = self.publish(topic, payload, qos, retain)
        if info is None:
            return False
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=timeout_s)
        try:
            return info.is_published()
        except (RuntimeError, ValueError):
            return False

    def _paho_connect(
        self, client: paho.Client, _u: Any, _f: Any, reason_code: ReasonCode, _p: Any
    ) -> None:
        if reason_code.is_failure:
            self._connected.clear()
            self.last_error = f"broker refused the connection: {reason_code}"
            if (
                reason_code.value == _UNSUPPORTED_PROTOCOL
                and self.cfg.protocol == "auto"
                and self._protocol == MQTTProtocolVersion.MQTTv5
            ):
                log.warning("broker refused MQTT 5; falling back to 3.1.1")
                threading.Thread(target=self._fallback, name="mqtt-fallback", daemon=True).start()
            else:
                log.error(
                    "mqtt connection refused",
                    extra=log_fields(reason=str(reason_code), url=redact_text(self.cfg.url)),
                )
            return
        if self.subscriptions:
            client.subscribe(self.subscriptions)
        self.connects += 1
        self.last_error = None
        self._connected.set()
        log.info(
            "mqtt connected",
            extra=log_fields(url=redact_text(self.cfg.url), protocol=self.protocol),
        )
        if self._on_connected is not None:
            self._on_connected()

    def _fallback(self) -> None:
        with self._lock:
            old = self._client
            if old is None or self._closed:
                return
            old.loop_stop()
            with contextlib.suppress(Exception):
                old.disconnect()
            self._protocol = MQTTProtocolVersion.MQTTv311
            self._build()

    def _paho_disconnect(
        self, client: paho.Client, _u: Any, _f: Any, reason_code: ReasonCode, _p: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            # Only here: reconnect_delay_set also resets paho's doubling.
            base = jittered_base_s(self.cfg.reconnect_min_s)
            client.reconnect_delay_set(
                min_delay=cast(int, base), max_delay=cast(int, self.cfg.reconnect_max_s)
            )
            log.log(
                logging.INFO if self._closed else logging.WARNING,
                "mqtt disconnected",
                extra=log_fields(reason=str(reason_code), closing=self._closed),
            )
            if self._on_disconnected is not None:
                self._on_disconnected(str(reason_code))

    def _paho_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        if self._on_connect_failed is not None:
            self._on_connect_failed()

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message.topic, bytes(message.payload))

    def _paho_publish(
        self, client: paho.Client, _u: Any, mid: int, reason_code: ReasonCode, _p: Any
    ) -> None:
        if self._on_published is not None:
            self._on_published(mid, not reason_code.is_failure, str(reason_code))


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
        self.client = _new_paho(cfg, client_id, protocol, ctx)
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
    protocols = [_protocol_of(cfg)]
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
                if rc.value == _UNSUPPORTED_PROTOCOL and protocol is not protocols[-1]:
                    continue
                raise connection_refused_error(str(rc))
            shot.publish(
                topic, payload, qos=qos, retain=retain, deadline=deadline, timeout_s=timeout_s
            )
            return
        finally:
            shot.close()
    raise CommsError(  # pragma: no cover - the loop always returns or raises
        "could not publish", fix="check the broker"
    )
