"""The daemon's broker session (:class:`MqttClient`); see :mod:`agent.comms.mqtt`."""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.comms.backoff import FullJitterBackoff
from agent.comms.endpoint import Will, parse_url
from agent.comms.mqtt.factory import UNSUPPORTED_PROTOCOL, new_paho, protocol_of, release
from agent.comms.tls import tls_context
from agent.config.broker import MqttConfig
from agent.core.closing import Closeable
from agent.core.logs import log_fields
from agent.core.redact import redact_text

log = logging.getLogger(__name__)


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
        rng: random.Random | None = None,
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
        self._protocol = protocol_of(cfg)
        self._client: paho.Client | None = None
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._closed = False
        self.epoch = 0
        """Incremented whenever the paho client is rebuilt (its in-flight messages are gone)."""
        self.connects = 0
        self.last_error: str | None = None
        self.backoff = FullJitterBackoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng=rng)
        """Reconnect delays: ``backoff.history`` holds the last ones drawn."""

    def start(self) -> None:
        """Check the TLS files, then connect in the background (returns at once)."""
        self._ctx = tls_context(self.cfg)
        with self._lock:
            self._build()

    def _build(self) -> None:
        client = new_paho(self.cfg, self.client_id, self._protocol, self._ctx)
        client.max_inflight_messages_set(self.max_inflight)
        first = cast(int, self.cfg.reconnect_min_s)  # replaced by a draw before every wait
        client.reconnect_delay_set(min_delay=first, max_delay=first)
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
        release(client)
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
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        expiry_s: int | None = None,
    ) -> paho.MQTTMessageInfo | None:
        """Queue one message (never blocks). Returns paho's info (``.mid``), or None when the
        client is not running or paho refused it; a QoS>0 message queued while the link is
        down is sent by paho on reconnect. ``expiry_s``: the MQTT 5 message expiry interval
        (the broker drops the message when it could not deliver it in time; not on 3.1.1)."""
        client = self._client
        if client is None or self._closed:
            return None
        props = None
        if expiry_s is not None and self._protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, min(int(expiry_s), 0xFFFFFFFF))
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
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
                reason_code.value == UNSUPPORTED_PROTOCOL
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
        self.backoff.succeeded()
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
            release(old)
            self._protocol = MQTTProtocolVersion.MQTTv311
            self._build()

    def _paho_disconnect(
        self, client: paho.Client, _u: Any, _f: Any, reason_code: ReasonCode, _p: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._arm(client, failed=not was)  # no session: the attempt failed (e.g. CONNACK refused)
        if was:
            log.log(
                logging.INFO if self._closed else logging.WARNING,
                "mqtt disconnected",
                extra=log_fields(reason=str(reason_code), closing=self._closed),
            )
            if self._on_disconnected is not None:
                self._on_disconnected(str(reason_code))

    def _arm(self, client: paho.Client, *, failed: bool) -> None:
        """Draw the delay paho waits before its next attempt (paho then sleeps exactly that)."""
        delay = cast(int, self.backoff.next_delay(failed=failed))  # paho takes float seconds
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def _paho_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._arm(client, failed=True)
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
