"""The MQTT transport: the only module that imports paho (paho-mqtt >= 2, callback API v2).

:class:`MqttClient` wraps one paho client running its own network thread (``connect_async`` +
``loop_start``). Its callbacks only check reason codes and hand events to the owner's
callbacks, which must themselves only enqueue. A session counts as connected only after a
successful CONNACK; subscriptions are (re)made in ``on_connect``. Reconnects back off
exponentially from ``reconnect_min_s`` to ``reconnect_max_s`` with jitter. ``protocol: auto``
tries MQTT 5 and rebuilds the client for 3.1.1 when the broker refuses version 5.

:func:`publish_once` is a blocking one-shot publish for the fleet-side ``edge-agent push``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.schema import MqttConfig
from agent.core.closing import Closeable
from agent.core.errors import CommsError
from agent.core.logs import log_fields

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # CONNACK "Unsupported protocol version" (paho maps v3 rc=1 to it)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def redact_url(url: str) -> str:
    """``mqtt://user:secret@host`` → ``mqtt://***@host``."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an ``mqtt://`` / ``mqtts://`` URL."""
    match = re.match(r"^(mqtts?)://(?:[^/@]*@)?([^\s/:]+)(?::(\d{1,5}))?/?$", url)
    if not match:
        raise CommsError(
            f"broker url {redact_url(url)!r} is not mqtt://host:port or mqtts://host:port",
            fix="set mqtt.url to e.g. mqtts://broker.example.com:8883",
        )
    tls = match.group(1) == "mqtts"
    port = int(match.group(3) or (8883 if tls else 1883))
    if not 1 <= port <= 65535:
        raise CommsError(
            f"broker url {redact_url(url)!r}: port {port} is not in 1..65535",
            fix="set mqtt.url to e.g. mqtt://127.0.0.1:1883",
        )
    return match.group(2), port, tls


def _check_file(path: Path, key: str) -> None:
    if not path.is_file():
        raise CommsError(
            f"{key}: file {path} does not exist",
            fix=f"create it or point {key} at the right PEM file",
        )
    if not os.access(path, os.R_OK):
        raise CommsError(
            f"{key}: file {path} is not readable by this user",
            fix=f"fix the permissions of {path} (the agent's user must read it)",
        )


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context for ``cfg`` (None for plain mqtt://); files are checked and loaded here,
    so a missing or bad file is a :class:`CommsError` naming the file and its config key."""
    _, _, use_tls = parse_url(cfg.url)
    if not use_tls:
        return None
    tls = cfg.tls
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.ca_file is not None:
        _check_file(tls.ca_file, "mqtt.tls.ca_file")
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        except (ssl.SSLError, ValueError) as err:
            raise CommsError(
                f"mqtt.tls.ca_file: {tls.ca_file} is not a PEM CA certificate ({err})",
                fix="point mqtt.tls.ca_file at the PEM file of the CA that signed the broker",
            ) from err
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        _check_file(tls.cert_file, "mqtt.tls.cert_file")
        _check_file(tls.key_file, "mqtt.tls.key_file")
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, ValueError) as err:
            raise CommsError(
                f"mqtt.tls.cert_file/key_file: cannot load {tls.cert_file} with {tls.key_file} "
                f"({err})",
                fix="use a PEM client certificate and its matching unencrypted PEM key",
            ) from err
    check = True if tls is None else tls.check_hostname
    ctx.check_hostname = check
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def diagnose_connection(cfg: MqttConfig, timeout_s: float = 5.0) -> str | None:
    """Open one TCP (and TLS) connection to the broker and describe why it fails, or None
    when it works. Turns paho's silent connect retries into a clear error."""
    host, port, _ = parse_url(cfg.url)
    try:
        ctx = tls_context(cfg)
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if ctx is not None:
                with ctx.wrap_socket(sock, server_hostname=host):
                    pass
        return None
    except ssl.SSLCertVerificationError as err:
        return (
            f"the broker's certificate was refused: {err.verify_message} "
            "(check mqtt.tls.ca_file and the broker's hostname)"
        )
    except ssl.SSLError as err:
        return f"TLS handshake with {host}:{port} failed: {err.reason or err}"
    except CommsError as err:
        return str(err)
    except OSError as err:
        return f"cannot reach the broker at {host}:{port}: {err.strerror or err}"


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


def _reason_text(rc: ReasonCode | int) -> str:
    return str(rc) if isinstance(rc, ReasonCode) else paho.error_string(rc)


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

    # ------------------------------------------------------------------ lifecycle

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
                url=redact_url(self.cfg.url),
                client_id=self.client_id,
                protocol="5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1",
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

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # ------------------------------------------------------------------ publish

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

    # ------------------------------------------------------------------ paho callbacks

    def _paho_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
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
                    extra=log_fields(reason=str(reason_code), url=redact_url(self.cfg.url)),
                )
            return
        if self.subscriptions:
            client.subscribe(self.subscriptions)
        self.connects += 1
        self.last_error = None
        self._connected.set()
        log.info(
            "mqtt connected",
            extra=log_fields(url=redact_url(self.cfg.url), protocol=self.protocol),
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
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            # Jitter: losing a session re-draws the base delay that paho then doubles on every
            # failed attempt (up to reconnect_max_s), so a fleet does not reconnect in lockstep.
            # Only here: reconnect_delay_set also resets paho's doubling.
            base = self.cfg.reconnect_min_s * random.uniform(0.5, 1.5)
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
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if self._on_published is not None:
            self._on_published(mid, not reason_code.is_failure, str(reason_code))


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
        client = _new_paho(cfg, cid, protocol, ctx)
        client.connect_timeout = max(0.5, timeout_s)
        connack: dict[str, ReasonCode] = {}
        acked: dict[str, ReasonCode] = {}
        got_connack, got_ack = threading.Event(), threading.Event()

        def on_connect(
            c: paho.Client,
            u: Any,
            f: Any,
            rc: ReasonCode,
            p: Any,
            _store: dict[str, ReasonCode] = connack,
            _ev: threading.Event = got_connack,
        ) -> None:
            _store["rc"] = rc
            _ev.set()

        def on_publish(
            c: paho.Client,
            u: Any,
            mid: int,
            rc: ReasonCode,
            p: Any,
            _store: dict[str, ReasonCode] = acked,
            _ev: threading.Event = got_ack,
        ) -> None:
            _store["rc"] = rc
            _ev.set()

        client.on_connect = on_connect
        client.on_publish = on_publish
        try:
            client.connect(host, port, keepalive=max(5, cfg.keepalive_s))
        except ssl.SSLCertVerificationError as err:
            raise CommsError(
                f"TLS: the broker's certificate at {host}:{port} was refused: {err.verify_message}",
                fix="set mqtt.tls.ca_file to the CA that signed the broker's certificate and "
                "connect with the hostname in its subjectAltName",
            ) from err
        except ssl.SSLError as err:
            raise CommsError(
                f"TLS handshake with {host}:{port} failed: {err.reason or err}",
                fix="check mqtt.tls (client certificate, key, CA) against the broker",
            ) from err
        except OSError as err:
            raise CommsError(
                f"cannot connect to the broker at {host}:{port}: {err.strerror or err}",
                fix="check mqtt.url and that the broker is running and reachable",
            ) from err
        client.loop_start()
        try:
            if not got_connack.wait(max(0.0, deadline - time.monotonic())):
                raise CommsError(
                    f"no CONNACK from {host}:{port} within {timeout_s:g} s",
                    fix="check the broker and the network, or raise mqtt.publish_timeout_s",
                )
            rc = connack["rc"]
            if rc.is_failure:
                if rc.value == _UNSUPPORTED_PROTOCOL and protocol is not protocols[-1]:
                    continue
                raise CommsError(
                    f"the broker refused the connection: {rc}",
                    fix="check mqtt.username/password or the client certificate, and the "
                    "broker's ACL",
                )
            info = client.publish(topic, payload, qos=qos, retain=retain)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            if qos > 0 and not got_ack.wait(max(0.0, deadline - time.monotonic())):
                raise CommsError(
                    f"the broker did not acknowledge the message on {topic} within {timeout_s:g} s",
                    fix="check the broker, or raise mqtt.publish_timeout_s",
                )
            ack = acked.get("rc")
            if ack is not None and ack.is_failure:
                raise CommsError(
                    f"the broker refused the message on {topic}: {ack}",
                    fix="check the broker's ACL for this client's identity and topic",
                )
            return
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()
    raise CommsError(  # pragma: no cover - the loop always returns or raises
        "could not publish", fix="check the broker"
    )
