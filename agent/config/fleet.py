"""``fleet.yaml``: the operator-side controller (``edge-agent fleet serve``).

Validated like every other file (``edge-agent validate-config``); the broker section is the same
:class:`~agent.config.broker.MqttConfig` the devices use (TLS, client certificate,
username/password). Secrets never sit in the file in clear when avoidable: the broker password,
the PostgreSQL DSN and the API token each come from a file or an environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.config.base import NAME_PATTERN, Strict, at
from agent.config.broker import MqttConfig

__all__ = [
    "ApiConfig",
    "BundleServerConfig",
    "FleetConfig",
    "FleetMetricsConfig",
    "HistoryConfig",
    "PostgresStoreConfig",
    "RolloutDefaults",
    "SqliteStoreConfig",
    "StoreConfig",
    "StreamConfig",
]


class SqliteStoreConfig(Strict):
    kind: Literal["sqlite"] = Field(
        default="sqlite", title="Kind", description="One SQLite file (WAL); one controller."
    )
    path: Path = Field(
        default=Path("fleet-state/fleet.db"),
        title="Database file",
        description="SQLite file for the registry and the rollouts (relative to fleet.yaml).",
    )


class PostgresStoreConfig(Strict):
    kind: Literal["postgres"] = Field(
        title="Kind", description="PostgreSQL: several controller instances share it."
    )
    dsn_file: Path | None = Field(
        default=None,
        title="DSN file",
        description="File holding the libpq connection string (e.g. postgresql://u:p@h/db).",
    )
    dsn_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]{0,127}$",
        title="DSN variable",
        description="Environment variable holding the connection string.",
    )
    pool_size: int = Field(
        default=4, ge=1, le=64, title="Connections", description="Connections kept open."
    )

    @model_validator(mode="after")
    def _one_source(self) -> PostgresStoreConfig:
        if (self.dsn_file is None) == (self.dsn_env is None):
            raise ValueError(at("dsn_file", "set exactly one of dsn_file and dsn_env"))
        return self


StoreConfig = Annotated[SqliteStoreConfig | PostgresStoreConfig, Field(discriminator="kind")]


class ApiConfig(Strict):
    host: str = Field(default="127.0.0.1", title="Host", description="Address the API binds.")
    port: int = Field(default=8780, ge=0, le=65535, title="Port", description="0 = any free.")
    token_file: Path | None = Field(
        default=None,
        title="Token file",
        description="File holding the bearer token required for every request that changes "
        "state (POST); reads need none.",
    )
    token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]{0,127}$",
        title="Token variable",
        description="Environment variable holding the bearer token (instead of token_file).",
    )
    max_body_kib: int = Field(
        default=64, ge=1, le=4096, title="Max body (KiB)", description="Larger requests: 413."
    )

    @model_validator(mode="after")
    def _token(self) -> ApiConfig:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError(at("token_file", "set one of token_file and token_env, not both"))
        return self


class BundleServerConfig(Strict):
    host: str = Field(
        default="127.0.0.1", title="Host", description="Address the bundle download server binds."
    )
    port: int = Field(default=0, ge=0, le=65535, title="Port", description="0 = any free port.")
    advertise_host: str | None = Field(
        default=None,
        title="Advertised host",
        description="Host name devices use in the manifest's base_url (default: host).",
    )


class RolloutDefaults(Strict):
    offline_after_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        title="Offline after (s)",
        description="A device that stays offline this long after its manifest was published is "
        "counted offline and no longer blocks its wave.",
    )
    probation_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        le=7 * 86400,
        title="Install timeout (s)",
        description="An online device that has not reached a final OTA state this long after "
        "its manifest was published counts as failed (reason install_timeout).",
    )
    expires: str = Field(
        default="7d",
        pattern=r"^\s*\d+\s*[smhd]?\s*$",
        title="Manifest lifetime",
        description="How long the signed per-device manifests stay valid (e.g. 24h, 7d).",
    )


class HistoryConfig(Strict):
    resolution_s: float = Field(
        default=10.0,
        ge=0.05,
        le=3600,
        title="Resolution (s)",
        description="One metrics point kept per device per this many seconds (the first of "
        "each slot).",
    )
    retention_h: float = Field(
        default=24.0,
        gt=0,
        le=24 * 90,
        title="Retention (h)",
        description="Metrics points older than this are deleted (the last 200 events and 50 "
        "OTA updates per device are kept regardless).",
    )


class FleetMetricsConfig(Strict):
    max_devices: int = Field(
        default=5000,
        ge=0,
        le=1_000_000,
        title="Max devices",
        description="At most this many devices (by id) get per-device series at /metrics; "
        "the fleet-wide counts cover every device.",
    )


class StreamConfig(Strict):
    max_clients: int = Field(
        default=32,
        ge=1,
        le=256,
        title="Max clients",
        description="Dashboards connected to /api/stream at once; more get 503.",
    )


class FleetConfig(Strict):
    """The controller's config file (``fleet.yaml``)."""

    fleet: str = Field(
        pattern=NAME_PATTERN, title="Fleet", description="The fleet (edge/<fleet>/...) it runs."
    )
    mqtt: MqttConfig = Field(title="Broker", description="The broker connection (enabled: true).")
    store: StoreConfig = Field(
        default_factory=SqliteStoreConfig,
        title="Store",
        description="Where the registry and the rollouts live.",
    )
    api: ApiConfig = Field(default_factory=ApiConfig, title="HTTP API", description="JSON API.")
    bundle_server: BundleServerConfig = Field(
        default_factory=BundleServerConfig,
        title="Bundle server",
        description="The HTTP server devices download rollout bundles from.",
    )
    rollouts: RolloutDefaults = Field(
        default_factory=RolloutDefaults,
        title="Rollout defaults",
        description="Timeouts and manifest lifetime of rollouts.",
    )
    history: HistoryConfig = Field(
        default_factory=HistoryConfig,
        title="History",
        description="Per-device metrics history, events and OTA updates kept in the store.",
    )
    metrics: FleetMetricsConfig = Field(
        default_factory=FleetMetricsConfig,
        title="Prometheus",
        description="The fleet series at the API's /metrics.",
    )
    stream: StreamConfig = Field(
        default_factory=StreamConfig,
        title="Live stream",
        description="The dashboard's server-sent events (/api/stream).",
    )
    state_dir: Path = Field(
        default=Path("fleet-state"),
        title="State directory",
        description="Where rollout bundles are copied (relative to fleet.yaml).",
    )
    share_group: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        title="Shared subscription group",
        description="Subscribe as $share/<group>/edge/<fleet>/... (MQTT 5) so several controller "
        "instances on one PostgreSQL store split the devices' messages; needs store kind "
        "postgres.",
    )
    instance_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        title="Instance id",
        description="This controller's name (MQTT client id, rollout lease owner); null = "
        "host name + a random suffix.",
    )
    tick_s: float = Field(
        default=1.0, gt=0, le=60, title="Tick (s)", description="How often rollouts advance."
    )

    @model_validator(mode="after")
    def _cross(self) -> FleetConfig:
        if not self.mqtt.enabled:
            raise ValueError(
                at("mqtt.enabled", "the controller needs its broker; set mqtt.enabled: true")
            )
        if self.share_group is not None and self.store.kind != "postgres":
            raise ValueError(
                at(
                    "share_group",
                    "shared subscriptions need store kind postgres (one shared "
                    "database); remove share_group or switch the store",
                )
            )
        if self.share_group is not None and self.mqtt.protocol == "3.1.1":
            raise ValueError(at("share_group", "shared subscriptions need MQTT 5 (protocol)"))
        return self
