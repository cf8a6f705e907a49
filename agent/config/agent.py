"""``agent.yaml``: the device's sources, broker, OTA, Prometheus, logging and daemon sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import NAME_PATTERN, Strict, at
from agent.config.broker import MqttConfig, check_device_id
from agent.config.model import ModelRef

SourceType = Literal["file", "images", "v4l2", "rtsp", "http", "gstreamer", "synthetic"]


class SourceConfig(Strict):
    name: str = Field(
        pattern=NAME_PATTERN, title="Name", description="Source name in metrics/events."
    )
    type: SourceType = Field(title="Type", description="What kind of source.")
    uri: str = Field(
        default="",
        title="URI",
        description="Path, device, URL or GStreamer pipeline, depending on type.",
    )
    model: str = Field(title="Model", description="Name of the model (from models) to run.")
    fps_cap: float | None = Field(
        default=None, gt=0, title="FPS cap", description="Upper bound on frames per second."
    )
    loop: bool = Field(default=False, title="Loop", description="Restart files at the end.")
    stall_timeout_s: float = Field(
        default=5.0, gt=0, title="Stall timeout (s)", description="No frame this long → stall."
    )
    width: int | None = Field(default=None, gt=0, title="Width", description="Capture width.")
    height: int | None = Field(default=None, gt=0, title="Height", description="Capture height.")

    @model_validator(mode="after")
    def _uri(self) -> SourceConfig:
        if self.type != "synthetic" and not self.uri:
            raise ValueError(at("uri", f"source type '{self.type}' needs a uri"))
        schemes = {"rtsp": ("rtsp://", "rtsps://"), "http": ("http://", "https://")}
        if self.type in schemes and not self.uri.startswith(schemes[self.type]):
            raise ValueError(
                at("uri", f"type '{self.type}' needs a uri starting with {schemes[self.type]}")
            )
        return self


class OtaConfig(Strict):
    """Over-the-air model updates (signed pushes over MQTT, see ``agent/ota``)."""

    enabled: bool = Field(
        default=False,
        title="Enabled",
        description="Accept signed model pushes on this device's OTA topic and its group's "
        "(mqtt.group).",
    )
    trust_dir: Path = Field(
        default=Path("/etc/edge-agent/trust"),
        title="Trust directory",
        description="Directory of Ed25519 public keys (PEM, one per file) whose signatures "
        "are accepted; several keys allow rotation.",
    )
    keep_versions: int = Field(
        default=3,
        ge=2,
        le=50,
        title="Versions kept",
        description="Model versions kept on disk per model (the committed one included); at "
        "least 2 so that a rollback target exists.",
    )
    disk_quota_mib: int = Field(
        default=2048,
        ge=1,
        title="Disk quota (MiB)",
        description="Most disk space all kept OTA bundles may use together; a push that would "
        "exceed it is rejected with reason over_quota.",
    )
    max_bundle_mib: int = Field(
        default=512,
        ge=1,
        title="Largest bundle (MiB)",
        description="Largest single pushed bundle (all files together).",
    )
    download_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        title="Download timeout (s)",
        description="Time a bundle download may take on top of 1 s per 64 KiB of the bundle: "
        "one deadline over name lookup, connect, TLS, headers and body of all its files "
        "(http, https, file); past it the update fails with download_timeout.",
    )
    inline_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        title="Inline chunk timeout (s)",
        description="How long to wait for the chunks of an inline push before failing it.",
    )
    build_poll_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        title="Build admission poll (s)",
        description="How often the updater asks the governor whether a build may start.",
    )
    build_wait_max_s: float = Field(
        default=3600.0,
        gt=0,
        title="Build admission wait (s)",
        description="Give up (state failed) after the governor held builds back this long.",
    )
    probation_s: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        title="Probation (s)",
        description="After a hot swap, how long the new model is watched before it is "
        "committed; NaN outputs, a crash or low throughput in this window roll it back.",
    )
    probation_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        title="Probation sampling interval (s)",
        description="How often the serving model is sampled during probation.",
    )
    probation_min_fps_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="Probation throughput fraction",
        description="Roll back when the served inference throughput over the probation window "
        "falls below this fraction of the throughput the validation gate measured.",
    )

    @model_validator(mode="after")
    def _sizes(self) -> OtaConfig:
        if self.max_bundle_mib > self.disk_quota_mib:
            raise ValueError(
                at(
                    "max_bundle_mib",
                    f"{self.max_bundle_mib} exceeds disk_quota_mib ({self.disk_quota_mib}); "
                    "lower it or raise the quota",
                )
            )
        return self


class PrometheusConfig(Strict):
    enabled: bool = Field(
        default=False,
        title="Prometheus endpoint",
        description="Serve the metrics payload's figures in Prometheus text format.",
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        title="Listen address",
        description="Address the endpoint binds; keep it on loopback unless a proxy guards it.",
    )
    port: int = Field(
        default=9108, ge=1, le=65535, title="Port", description="TCP port of /metrics."
    )


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", title="Level", description="Log level."
    )


class DaemonConfig(Strict):
    """How ``edge-agent run`` behaves as a service: drain, supervision and the watchdog."""

    stop_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        title="Stop timeout (s)",
        description="On SIGTERM, in-flight frames are drained for at most this long in all; "
        "keep it below the unit's TimeoutStopSec.",
    )
    stats_interval_s: float = Field(
        default=5.0,
        gt=0,
        title="Stats interval (s)",
        description="Seconds between stats log lines (and systemd STATUS= updates).",
    )
    restart_budget: int = Field(
        default=5,
        ge=0,
        title="Restart budget",
        description="Restarts of one failed component (a pipeline, the monitor) allowed within "
        "restart_window_s; one more failure and the daemon exits with code 3 so systemd "
        "restarts the whole service.",
    )
    restart_window_s: float = Field(
        default=300.0,
        gt=0,
        title="Restart window (s)",
        description="The sliding window of the restart budget.",
    )
    progress_timeout_s: float = Field(
        default=30.0,
        gt=0,
        title="Progress timeout (s)",
        description="A component with work to do (frames pending, a source streaming) that "
        "makes no progress for this long is stuck: the systemd watchdog pings stop and systemd "
        "restarts the service. Keep it above every source's stall_timeout_s so a source's own "
        "stall recovery acts first.",
    )
    ready_timeout_s: float = Field(
        default=120.0,
        gt=0,
        title="Ready timeout (s)",
        description="READY=1 is sent when the first frame has gone through; if no frame came "
        "this long after the pipelines started (a camera that is down), READY=1 is sent anyway "
        "so that one dead camera does not keep the service from starting.",
    )


class AgentConfig(Strict):
    """``agent.yaml``."""

    device_id: str = Field(
        pattern=NAME_PATTERN,
        title="Device id",
        description="Unique per device; also its broker username (docs/broker-acl.md). Not a "
        "topic-layout word (group, ota, cmd, ...).",
    )
    fleet: str = Field(pattern=NAME_PATTERN, title="Fleet", description="Fleet/group name.")
    profile: str = Field(
        default="auto",
        title="Profile",
        description="Device profile name, or auto to detect the board.",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/edge-agent"),
        title="State directory",
        description="Persistent state (active model, OTA, spool).",
    )
    cache_dir: Path | None = Field(
        default=None,
        title="Cache directory",
        description="Engine cache and timing caches. Default: the one every command uses "
        "($EDGE_AGENT_CACHE_DIR, systemd's $CACHE_DIRECTORY, $XDG_CACHE_HOME/edge-agent, "
        "/var/cache/edge-agent as root or edge-agent, else ~/.cache/edge-agent).",
    )
    models: Annotated[list[ModelRef], Field(min_length=1)] = Field(
        title="Models", description="Models this device serves."
    )
    sources: list[SourceConfig] = Field(
        default_factory=list, title="Sources", description="Camera/video sources."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, title="MQTT", description="Broker.")
    metrics: PrometheusConfig = Field(
        default_factory=PrometheusConfig,
        title="Prometheus",
        description="Optional local Prometheus endpoint.",
    )
    ota: OtaConfig = Field(
        default_factory=OtaConfig, title="OTA", description="Over-the-air model updates."
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, title="Logging", description="Logging."
    )
    daemon: DaemonConfig = Field(
        default_factory=DaemonConfig,
        title="Daemon",
        description="Service behaviour: stop drain, restart budget, watchdog progress timeout.",
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return check_device_id(v)

    @model_validator(mode="after")
    def _refs(self) -> AgentConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        src_names = [s.name for s in self.sources]
        if len(set(src_names)) != len(src_names):
            raise ValueError("source names must be unique")
        for index, src in enumerate(self.sources):
            if src.model not in names:
                raise ValueError(
                    at(
                        f"sources.{index}.model",
                        f"model '{src.model}' is not in models {names}; "
                        "add it to models or fix the name",
                    )
                )
        return self
