"""The broker endpoint as configured: its URL (host, port, TLS) and the last will a session
leaves there."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.core.errors import CommsError
from agent.core.redact import redact_text


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when the session is lost."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an ``mqtt://`` / ``mqtts://`` URL."""
    match = re.match(r"^(mqtts?)://(?:[^/@]*@)?([^\s/:]+)(?::(\d{1,5}))?/?$", url)
    if not match:
        raise CommsError(
            f"broker url {redact_text(url)!r} is not mqtt://host:port or mqtts://host:port",
            fix="set mqtt.url to e.g. mqtts://broker.example.com:8883",
        )
    tls = match.group(1) == "mqtts"
    port = int(match.group(3) or (8883 if tls else 1883))
    if not 1 <= port <= 65535:
        raise CommsError(
            f"broker url {redact_text(url)!r}: port {port} is not in 1..65535",
            fix="set mqtt.url to e.g. mqtt://127.0.0.1:1883",
        )
    return match.group(2), port, tls
