"""Why a broker connection fails, in words: paho retries silently, these explain.

:class:`ConnectDiagnosis` runs :func:`diagnose_connection` on its own short-lived thread when
paho reports a failed connect (at most once per ``every_s``) and hands the problem found to its
owner; :func:`connect_error` and the ``*_error`` builders name the failures of a one-shot
publish (:func:`agent.comms.mqtt.publish_once`).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

from agent.comms.endpoint import parse_url
from agent.comms.tls import tls_context
from agent.config.broker import MqttConfig
from agent.core.errors import CommsError


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


def connect_error(err: OSError, host: str, port: int) -> CommsError:
    """The :class:`CommsError` (with a fix) for a failed one-shot connect to ``host:port``."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return CommsError(
            f"TLS: the broker's certificate at {host}:{port} was refused: {err.verify_message}",
            fix="set mqtt.tls.ca_file to the CA that signed the broker's certificate and "
            "connect with the hostname in its subjectAltName",
        )
    if isinstance(err, ssl.SSLError):
        return CommsError(
            f"TLS handshake with {host}:{port} failed: {err.reason or err}",
            fix="check mqtt.tls (client certificate, key, CA) against the broker",
        )
    return CommsError(
        f"cannot connect to the broker at {host}:{port}: {err.strerror or err}",
        fix="check mqtt.url and that the broker is running and reachable",
    )


def connection_refused_error(reason: str) -> CommsError:
    """The broker answered CONNACK with a failure ``reason``."""
    return CommsError(
        f"the broker refused the connection: {reason}",
        fix="check mqtt.username/password or the client certificate, and the broker's ACL",
    )


def no_connack_error(where: str, timeout_s: float) -> CommsError:
    return CommsError(
        f"no CONNACK from {where} within {timeout_s:g} s",
        fix="check the broker and the network, or raise mqtt.publish_timeout_s",
    )


def no_ack_error(topic: str, timeout_s: float) -> CommsError:
    return CommsError(
        f"the broker did not acknowledge the message on {topic} within {timeout_s:g} s",
        fix="check the broker, or raise mqtt.publish_timeout_s",
    )


def message_refused_error(topic: str, reason: str) -> CommsError:
    """The broker refused a published message (MQTT 5 PUBACK failure ``reason``)."""
    return CommsError(
        f"the broker refused the message on {topic}: {reason}",
        fix="check the broker's ACL for this client's identity and topic",
    )


class ConnectDiagnosis:
    """Diagnoses failed connects off paho's thread; ``on_problem(text)`` gets each finding."""

    def __init__(
        self, cfg: MqttConfig, on_problem: Callable[[str], None], *, every_s: float = 10.0
    ) -> None:
        self.cfg = cfg
        self._on_problem = on_problem
        self.every_s = every_s
        self._running = threading.Lock()
        self._last = 0.0

    def on_connect_failed(self) -> None:
        """paho's callback: start one diagnosis unless one runs or ran within ``every_s``."""
        now = time.monotonic()
        if now - self._last < self.every_s or not self._running.acquire(blocking=False):
            return
        self._last = now
        threading.Thread(target=self._diagnose, name="edge-mqtt-diag", daemon=True).start()

    def _diagnose(self) -> None:
        try:
            problem = diagnose_connection(self.cfg)
            if problem is not None:
                self._on_problem(problem)
        finally:
            self._running.release()
