"""The MQTT broker connection (agent.yaml `mqtt`), shared by the device and the operator tools."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import NAME_PATTERN, Strict, at
from agent.core.errors import EdgeAgentError
from agent.core.redact import redact_text


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


_MQTT_URL = re.compile(r"^mqtts?://[^\s/:@]+(:\d{1,5})?/?$")

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""Names of environment variables that hold secrets."""


def read_secret(*, file: Path | None, env: str | None, file_key: str, env_key: str) -> str | None:
    """The secret held by ``file`` (trailing newline stripped) or by the variable ``env``;
    None when neither is set. ``file_key`` / ``env_key`` name the settings in errors (e.g.
    ``mqtt.password_file``); the secret itself never appears in one."""
    if file is not None:
        path = Path(file).expanduser()
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
            raise EdgeAgentError(
                f"{file_key}: cannot read the secret ({reason})",
                fix=f"write the secret on one line into a file readable by this user only "
                f"(chmod 600) and point {file_key} at it",
                path=path,
            ) from None
        if not secret:
            raise EdgeAgentError(
                f"{file_key}: the file is empty", fix="write the secret into it", path=path
            )
        return secret
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise EdgeAgentError(
                f"{env_key}: the environment variable {env} is not set (or is empty)",
                fix=f"export {env} with the secret before starting, or use {file_key}",
            )
        return value
    return None


def _url_problem(v: str) -> str | None:
    """Why ``v`` is not a broker URL, in words that never repeat a password."""
    if "@" in v:
        scheme = re.match(r"^[a-z]{1,10}://", v)
        shown = f"{scheme.group(0) if scheme else ''}***@{v.rsplit('@', 1)[1]}"
        return (
            f"'{shown}': credentials do not go in the url; put the user in "
            "username and the password in password_file or password_env"
        )
    match = _MQTT_URL.match(v)
    if not match:
        return f"'{redact_text(v)}' is not mqtt://host:port or mqtts://host:port"
    if match.group(1) is not None and not 1 <= int(match.group(1)[1:]) <= 65535:
        return f"'{redact_text(v)}': port {match.group(1)[1:]} is not in 1..65535"
    return None


_PASSWORD_KEYS = ("password", "password_file", "password_env")


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
    password: str | None = Field(
        default=None,
        title="Password",
        description="Optional; prefer password_file or password_env (never both).",
    )
    password_file: Path | None = Field(
        default=None,
        title="Password file",
        description="File holding the broker password (a trailing newline is ignored).",
    )
    password_env: str | None = Field(
        default=None,
        pattern=ENV_NAME_PATTERN,
        title="Password variable",
        description="Environment variable holding the broker password.",
    )
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
        description="Backoff base: a reconnect waits uniform(0, min(reconnect_max_s, "
        "reconnect_min_s × 2^failures)) (full jitter).",
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
    telemetry_expiry_s: int = Field(
        default=86400,
        ge=0,
        le=4294967295,
        title="Telemetry lifetime (s)",
        description="Metrics and events older than this (from their ts) are dropped from the "
        "spool instead of sent; on MQTT 5 each carries the rest as its message expiry "
        "interval. 0 = they never expire.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        problem = _url_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    def secret_password(self) -> str | None:
        """The broker password: ``password``, or read now from ``password_file`` /
        ``password_env`` (so a rotated file is picked up at the next connect); None without
        one. Raises :class:`EdgeAgentError` naming the file or variable when it cannot."""
        if self.password is not None:
            return self.password
        return read_secret(
            file=self.password_file,
            env=self.password_env,
            file_key="mqtt.password_file",
            env_key="mqtt.password_env",
        )

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
        given = [k for k in _PASSWORD_KEYS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                at(given[1], f"set one of {', '.join(_PASSWORD_KEYS)}, not {' and '.join(given)}")
            )
        if self.tls is not None and not self.url.startswith("mqtts://"):
            raise ValueError(at("url", "a tls section needs an mqtts:// url; change the scheme"))
        return self
