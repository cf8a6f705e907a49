"""Device messages for the registry tests, built with the daemon's own builders
(:mod:`agent.comms.payloads`, :class:`agent.ota.record.UpdateRecord`), never by hand."""

from __future__ import annotations

from typing import Any

from agent.comms.payloads import event_payload, metrics_payload, model_payload, state_payload
from agent.comms.topics import Topics
from agent.ota.record import RollbackTarget, Transition, UpdateRecord
from agent.ota.states import UpdateState

FLEET = "prod"
T0 = 1_760_000_000.0


def metrics_body(
    fps: float = 14.9, version: int = 3, engine_hash: str = "9f2c" * 16
) -> dict[str, Any]:
    model = {"name": "det", "version": version, "precision": "int8", "engine_hash": engine_hash}
    return {
        "uptime_s": 3600.5,
        "sources": {
            "cam0": {
                "state": "streaming",
                "fps": fps,
                "latency_ms": {"p50": 21.0, "p99": 40.2},
                "drops": 3,
                "frames": 53640,
            }
        },
        "stages_ms": {"queue": 2.1, "infer": 9.4},
        "power_w": 7.3,
        "temperatures_c": {"cpu": 51.2, "gpu": 49.8},
        "memory": {"used_mib": 3120.0, "total_mib": 7620.0, "used_pct": 40.9},
        "gpu_load_pct": 61.0,
        "fps_per_w": 2.04,
        "model": model,
        "models": {"det": model},
        "governor": {"state": "normal", "workers": 2, "fps_cap": 15.0, "builds_allowed": True},
        "comms": {"spooled": 0, "dropped": 0, "sent": 10},
    }


def ota_record(
    state: UpdateState,
    *,
    version: int = 4,
    updated_at: int = 1_760_000_019,
    record_id: str = "3f9a1c0b7e21",
) -> dict[str, Any]:
    """An updater record as ``public_json`` publishes it, having gone up to ``state``."""
    order = list(UpdateState)
    path = order[: order.index(state) + 1] if state in order[:8] else [*order[:7], state]
    record = UpdateRecord(
        id=record_id,
        op="update",
        state=state,
        started_at=updated_at - 18,
        updated_at=updated_at,
        model="det",
        version=version,
        transitions=[Transition(s, updated_at, None) for s in path],
    )
    record.set(
        manifest_sha256="c0de" * 16,
        key_id="fleet-2026",
        payload="url",
        artifact={
            "artifact_dir": "/x",
            "engine_sha256": "ab" * 32,
            "validated_fps": 212.4,
            "precision": "int8",
            "cache_hit": False,
        },
        validated_fps=212.4,
        baseline_fps=208.9,
        previous=RollbackTarget(version=version - 1, bundle_dir="/b", source="ota"),
    )
    if state in (UpdateState.FAILED, UpdateState.ROLLED_BACK):
        record.reason = "probation_slow"
    return record.public_json()


class Device:
    """One simulated device's messages: topic and payload bytes, with its own seq counter."""

    def __init__(self, name: str, boot: int = 42) -> None:
        self.name = name
        self.boot = boot
        self.seq = 0
        self.topics = Topics(FLEET, name)

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def birth(self, ts: float = T0) -> tuple[str, bytes]:
        return self.topics.state, state_payload(
            "online", device=self.name, boot=self.boot, ts=ts, version="0.1.0"
        )

    def will(self, ts: float = T0) -> tuple[str, bytes]:
        return self.topics.state, state_payload(
            "offline", device=self.name, boot=self.boot, ts=ts, reason="lost"
        )

    def metrics(self, ts: float = T0 + 10, **body: Any) -> tuple[str, bytes]:
        return self.topics.metrics, metrics_payload(
            metrics_body(**body), device=self.name, boot=self.boot, seq=self._next(), ts=ts
        )

    def event(self, kind: str, data: dict[str, Any], ts: float = T0 + 11) -> tuple[str, bytes]:
        return self.topics.events, event_payload(
            kind, data, device=self.name, boot=self.boot, seq=self._next(), ts=ts
        )

    def model(self, record: dict[str, Any], ts: float = T0 + 20) -> tuple[str, bytes]:
        return self.topics.model, model_payload(record, device=self.name, ts=ts)
