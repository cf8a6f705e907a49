"""The MQTT broker connection (agent.yaml `mqtt`), shared by the device and the operator tools."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import NAME_PATTERN, Strict, at


class TlsConfig(Strict):
    ca_file: Path | None = Field(default=None, title="CA file", description="PEM CA bundle.")
    cert_file: Path | None = Field(
        default=None, title="Client certificate", description="PEM client certificate."
    )
    key_file: Path | None = Field(default=None, title="Client key", description="PEM key.")
    check_hostname: bool = Field(
        default=True, title="Check hostname", description="Verify the broker's hostname."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(at("cert_file", "cert_file and key_file go together; set both"))
        return self


RESERVED_NAMES = frozenset(
    {"edge", "group", "state", "metrics", "events", "detections", "model", "ota", "cmd", "response"}
)
"""The fixed levels of the MQTT topic layout (``agent.comms.topics.LAYOUT_WORDS``, kept equal
by a test): none may be a device id, or the device's tree ``edge/<fleet>/<device>/...`` would
overlap a group's ``edge/<fleet>/group/<group>/ota`` or another level of the layout."""


def check_device_id(value: str) -> str:
    """``value`` when it can be a device id (and a broker username, see docs/broker-acl.md);
    else ``ValueError`` with the fix. ``NAME_PATTERN`` already keeps out the MQTT wildcards
    ``+`` and ``#``, ``/``, a leading ``$`` and the empty id."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a device id: use 1-63 lower-case letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (no MQTT wildcard '+' or '#', no '/', no "
            "leading '$')"
        )
    if value in RESERVED_NAMES:
        raise ValueError(
            f"{value!r} is reserved: it is a level of the MQTT topic layout (e.g. "
            "edge/<fleet>/group/<group>/ota), so a device with this id could reach group "
            f"topics; choose another id, e.g. '{value}-1' (reserved: "
            f"{', '.join(sorted(RESERVED_NAMES))})"
        )
    return value


_MQTT_URL = re.compile(r"^mqtts?://[^\s/:]+(:\d{1,5})?/?$")


class MqttConfig(Strict):
    enabled: bool = Field(default=False, title="Enabled", description="Connect to a broker.")
    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        title="Broker URL",
        description="mqtt://host:port or mqtts://host:port.",
    )
    keepalive_s: int = Field(
        default=30, ge=5, le=3600, title="Keepalive (s)", description="MQTT keepalive."
    )
    username: str | None = Field(default=None, title="Username", description="Optional.")
    password: str | None = Field(default=None, title="Password", description="Optional.")
    tls: TlsConfig | None = Field(default=None, title="TLS", description="TLS settings.")
    spool_max_mib: int = Field(
        default=64, ge=1, title="Spool size (MiB)", description="Offline store-and-forward cap."
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        title="Client id",
        description="MQTT client id; null = the device id.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        title="Protocol",
        description="MQTT protocol version; auto tries 5 and falls back to 3.1.1 when the broker "
        "refuses it.",
    )
    group: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        title="OTA group",
        description="Group whose OTA pushes (edge/<fleet>/group/<group>/ota) this device takes.",
    )
    max_payload_kib: int = Field(
        default=256,
        ge=1,
        le=65536,
        title="Max command payload (KiB)",
        description="Command requests larger than this are refused with an error response.",
    )
    detections_enabled: bool = Field(
        default=False,
        title="Publish detections",
        description="Publish per-frame detections on .../detections (QoS 0, rate-limited).",
    )
    detections_max_per_s: float = Field(
        default=2.0,
        gt=0,
        le=100,
        title="Detections rate (msg/s)",
        description="Upper bound on detections messages per second; extra ones are dropped.",
    )
    reconnect_min_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        title="Reconnect delay min (s)",
        description="First reconnect delay; it doubles (with jitter) up to reconnect_max_s.",
    )
    reconnect_max_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        title="Reconnect delay max (s)",
        description="Longest delay between two reconnect attempts.",
    )
    publish_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        title="Publish timeout (s)",
        description="Longest wait for a broker acknowledgement where a publish is awaited.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        match = _MQTT_URL.match(v)
        if not match:
            raise ValueError(f"'{v}' is not mqtt://host:port or mqtts://host:port")
        if match.group(1) is not None and not 1 <= int(match.group(1)[1:]) <= 65535:
            raise ValueError(f"'{v}': port {match.group(1)[1:]} is not in 1..65535")
        return v

    @model_validator(mode="after")
    def _cross(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                at(
                    "reconnect_min_s",
                    f"{self.reconnect_min_s} must not exceed reconnect_max_s "
                    f"({self.reconnect_max_s})",
                )
            )
        if self.tls is not None and not self.url.startswith("mqtts://"):
            raise ValueError(at("url", "a tls section needs an mqtts:// url; change the scheme"))
        return self
