"""Typed records of the device registry: what the fleet controller knows about one device.

Built from the device's own messages (``docs/telemetry.md``) by :mod:`.ingest`, persisted by
:mod:`.store`. Every record is frozen; an update makes a new one (``dataclasses.replace``).
``to_json`` / ``from_json`` are the store's wire form (one JSON document per device);
``from_json`` trusts its input (it only reads what ``to_json`` wrote).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DeviceRecord",
    "MetricsSnapshot",
    "ModelSlot",
    "OtaStatus",
    "SourceFigures",
]


@dataclass(frozen=True)
class ModelSlot:
    """One served model as the device reports it in ``metrics`` (``model`` / ``models.<name>``)."""

    name: str
    version: int | None = None
    precision: str | None = None
    engine_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "precision": self.precision,
            "engine_hash": self.engine_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSlot:
        return cls(
            name=data["name"],
            version=data.get("version"),
            precision=data.get("precision"),
            engine_hash=data.get("engine_hash"),
        )


@dataclass(frozen=True)
class SourceFigures:
    """One camera source of a metrics message."""

    state: str
    fps: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    drops: int | None = None
    frames: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "fps": self.fps,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "drops": self.drops,
            "frames": self.frames,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceFigures:
        return cls(**data)


@dataclass(frozen=True)
class MetricsSnapshot:
    """The latest ``metrics`` message of a device, reduced to the figures the fleet uses.

    ``fps`` is the sum over sources (what a rollout compares before and after a swap).
    """

    seq: int
    boot: int
    ts: float
    uptime_s: float | None = None
    fps: float | None = None
    sources: dict[str, SourceFigures] = field(default_factory=dict[str, SourceFigures])
    power_w: float | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict[str, float])
    memory_used_pct: float | None = None
    gpu_load_pct: float | None = None
    fps_per_w: float | None = None
    governor_state: str | None = None
    spool_dropped: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "boot": self.boot,
            "ts": self.ts,
            "uptime_s": self.uptime_s,
            "fps": self.fps,
            "sources": {k: v.to_json() for k, v in self.sources.items()},
            "power_w": self.power_w,
            "temperatures_c": dict(self.temperatures_c),
            "memory_used_pct": self.memory_used_pct,
            "gpu_load_pct": self.gpu_load_pct,
            "fps_per_w": self.fps_per_w,
            "governor_state": self.governor_state,
            "spool_dropped": self.spool_dropped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricsSnapshot:
        fields = dict(data)
        fields["sources"] = {
            k: SourceFigures.from_json(v) for k, v in data.get("sources", {}).items()
        }
        return cls(**fields)


@dataclass(frozen=True)
class OtaStatus:
    """The device's current OTA update record (retained ``model`` topic / ``ota.state`` events).

    ``state`` is the updater's state (``received`` … ``active``, ``rejected``, ``failed``,
    ``rolled_back``); ``reason`` the machine-readable cause of a terminal failure (e.g.
    ``probation_slow``, ``probation_nan``); the fps figures are what the device measured.
    """

    id: str
    op: str
    state: str
    updated_at: int
    steps: int = 0
    """How many states the record went through (orders two reports of the same second)."""
    model: str | None = None
    version: int | None = None
    reason: str | None = None
    detail: str = ""
    engine_sha256: str | None = None
    validated_fps: float | None = None
    baseline_fps: float | None = None
    previous_version: int | None = None
    manifest_sha256: str | None = None
    key_id: str | None = None
    gate_passed: bool | None = None
    """The device's validation gate verdict for the built engine (``artifact.gate.passed``)."""
    task_drop: float | None = None
    """Float task metric minus the built engine's (``artifact.gate.task_drop``; > 0 = worse)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "op": self.op,
            "state": self.state,
            "updated_at": self.updated_at,
            "steps": self.steps,
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
            "detail": self.detail,
            "engine_sha256": self.engine_sha256,
            "validated_fps": self.validated_fps,
            "baseline_fps": self.baseline_fps,
            "previous_version": self.previous_version,
            "manifest_sha256": self.manifest_sha256,
            "key_id": self.key_id,
            "gate_passed": self.gate_passed,
            "task_drop": self.task_drop,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OtaStatus:
        return cls(**data)


@dataclass(frozen=True)
class DeviceRecord:
    """Everything the registry keeps about one device of one fleet.

    ``last_seen`` is the controller's clock when any message of the device arrived (device
    clocks drift); ``metrics_seq`` / ``events_seq`` are the highest ``seq`` taken (dedupe: the
    spool re-sends what was in flight). ``profile`` / ``board`` come from the birth or metrics
    message when the device sends them (optional fields of the contract).
    """

    fleet: str
    device: str
    first_seen: float
    last_seen: float
    online: bool = False
    boot: int | None = None
    state_ts: float | None = None
    offline_reason: str | None = None
    agent_version: str | None = None
    profile: str | None = None
    board: str | None = None
    group: str | None = None
    """The device's OTA group (``mqtt.group``, sent in its birth message)."""
    model: ModelSlot | None = None
    models: dict[str, ModelSlot] = field(default_factory=dict[str, ModelSlot])
    ota: OtaStatus | None = None
    metrics: MetricsSnapshot | None = None
    metrics_seq: int | None = None
    events_seq: int | None = None
    last_event_kind: str | None = None
    last_event_ts: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.fleet, self.device)

    @property
    def engine_hash(self) -> str | None:
        """The serving engine's hash: the metrics' model, else the last OTA artifact."""
        if self.model is not None and self.model.engine_hash:
            return self.model.engine_hash
        return None if self.ota is None else self.ota.engine_sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "device": self.device,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "online": self.online,
            "boot": self.boot,
            "state_ts": self.state_ts,
            "offline_reason": self.offline_reason,
            "agent_version": self.agent_version,
            "profile": self.profile,
            "board": self.board,
            "group": self.group,
            "model": None if self.model is None else self.model.to_json(),
            "models": {k: v.to_json() for k, v in self.models.items()},
            "ota": None if self.ota is None else self.ota.to_json(),
            "metrics": None if self.metrics is None else self.metrics.to_json(),
            "metrics_seq": self.metrics_seq,
            "events_seq": self.events_seq,
            "last_event_kind": self.last_event_kind,
            "last_event_ts": self.last_event_ts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceRecord:
        fields = dict(data)
        model = data.get("model")
        ota = data.get("ota")
        metrics = data.get("metrics")
        fields["model"] = None if model is None else ModelSlot.from_json(model)
        fields["models"] = {k: ModelSlot.from_json(v) for k, v in data.get("models", {}).items()}
        fields["ota"] = None if ota is None else OtaStatus.from_json(ota)
        fields["metrics"] = None if metrics is None else MetricsSnapshot.from_json(metrics)
        return cls(**fields)
