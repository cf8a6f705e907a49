"""Untrusted device messages → typed parts of a :class:`~.records.DeviceRecord`.

The fleet side reads what devices publish (``docs/telemetry.md``) and trusts none of it beyond
the topic the broker ACL lets the device write: every field is checked for type and range,
strings are sanitized and cut, maps are capped. Unknown fields are ignored (the contract adds
optional fields without changing the major); a missing or mistyped *required* field is a
:class:`BadMessage` whose ``reason`` is a counter label.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from agent.comms.payloads import (
    METRICS_SCHEMAS,
    SCHEMA_EVENT,
    SCHEMA_MODEL,
    SCHEMA_STATE,
)
from agent.config.base import NAME_PATTERN
from agent.core.jsonlimits import sanitize_text
from agent.fleet.registry.records import MetricsSnapshot, ModelSlot, OtaStatus, SourceFigures

__all__ = [
    "BadMessage",
    "EventMessage",
    "MetricsMessage",
    "StateMessage",
    "envelope_ts",
    "parse_event",
    "parse_metrics",
    "parse_ota",
    "parse_state",
    "require_envelope",
]

MAX_TEXT = 256
MAX_MAP = 64
"""Most sources, temperature zones or models taken from one message (the rest are ignored)."""

SCHEMAS: dict[str, tuple[str, ...]] = {
    "state": (SCHEMA_STATE,),
    "metrics": METRICS_SCHEMAS,
    "events": (SCHEMA_EVENT,),
    "model": (SCHEMA_MODEL,),
}
"""The payload schemas (majors) the registry understands, by topic leaf: ``metrics/2`` and the
``metrics/1`` of older agents and the simulated devices."""


class BadMessage(ValueError):
    """A device message the registry cannot take; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _text(value: Any, max_len: int = MAX_TEXT) -> str | None:
    return sanitize_text(value, max_len=max_len) if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -(2**63) <= value < 2**63 else None  # fits SQLite / PostgreSQL BIGINT


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}  # pyright: ignore[reportUnknownVariableType]


def _capped(value: Any) -> list[tuple[str, Any]]:
    """The first :data:`MAX_MAP` string-keyed items of a JSON object (others ignored)."""
    items = [(k, v) for k, v in _dict(value).items() if isinstance(k, str)]
    return [(sanitize_text(k, max_len=64), v) for k, v in items[:MAX_MAP]]


def require_envelope(doc: Any, leaf: str, device: str) -> dict[str, Any]:
    """The message as a dict whose ``schema`` is the one of ``leaf`` and whose ``device`` is the
    topic's device (the topic is what the broker ACL vouches for)."""
    if not isinstance(doc, dict):
        raise BadMessage("not_object", type(doc).__name__)
    message: dict[str, Any] = doc  # pyright: ignore[reportUnknownVariableType]
    schema = message.get("schema")
    if schema not in SCHEMAS[leaf]:
        raise BadMessage("unknown_schema", sanitize_text(schema, max_len=64))
    if message.get("device") != device:
        raise BadMessage("device_mismatch", sanitize_text(message.get("device"), max_len=64))
    return message


def envelope_ts(doc: dict[str, Any]) -> float | None:
    """The message's ``ts`` when it is a finite number."""
    return _num(doc.get("ts"))


@dataclass(frozen=True)
class StateMessage:
    online: bool
    boot: int
    ts: float
    reason: str | None
    version: str | None
    profile: str | None
    board: str | None
    group: str | None = None
    """The device's ``mqtt.group`` (a name as the config allows it; anything else ignored)."""


def _group(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 128:
        return None
    return value if re.fullmatch(NAME_PATTERN, value) else None


def parse_state(doc: dict[str, Any]) -> StateMessage:
    state = doc.get("state")
    boot = _int(doc.get("boot"))
    ts = _num(doc.get("ts"))
    if state not in ("online", "offline") or boot is None or ts is None:
        raise BadMessage("bad_fields", "state needs state (online|offline), boot and ts")
    return StateMessage(
        online=state == "online",
        boot=boot,
        ts=ts,
        reason=_text(doc.get("reason"), 64),
        version=_text(doc.get("version"), 64),
        profile=_text(doc.get("profile"), 64),
        board=_text(doc.get("board"), 64),
        group=_group(doc.get("group")),
    )


def _seq_boot_ts(doc: dict[str, Any], what: str) -> tuple[int, int, float]:
    seq, boot, ts = _int(doc.get("seq")), _int(doc.get("boot")), _num(doc.get("ts"))
    if seq is None or boot is None or ts is None:
        raise BadMessage("bad_fields", f"{what} needs integer seq and boot and a numeric ts")
    return seq, boot, ts


def _model_slot(value: Any) -> ModelSlot | None:
    data = _dict(value)
    name = _text(data.get("name"), 128)
    if name is None:
        return None
    return ModelSlot(
        name=name,
        version=_int(data.get("version")),
        precision=_text(data.get("precision"), 16),
        engine_hash=_text(data.get("engine_hash"), 128),
    )


def _scaled(value: Any, factor: float) -> float | None:
    """A ``metrics/2`` base-unit figure in the record's unit (s → ms, ratio → %), rounded to 6
    decimals so that both majors give the same record for the same reading."""
    number = _num(value)
    return None if number is None else round(number * factor, 6)


def _first(*values: float | None) -> float | None:
    """The first known value: the ``metrics/2`` field, else its deprecated ``metrics/1`` twin."""
    return next((v for v in values if v is not None), None)


def _source(value: Any) -> SourceFigures | None:
    data = _dict(value)
    state = _text(data.get("state"), 32)
    if state is None:
        return None
    latency, seconds = _dict(data.get("latency_ms")), _dict(data.get("latency_seconds"))
    return SourceFigures(
        state=state,
        fps=_num(data.get("fps")),
        latency_p50_ms=_first(_scaled(seconds.get("0.5"), 1e3), _num(latency.get("p50"))),
        latency_p99_ms=_first(_scaled(seconds.get("0.99"), 1e3), _num(latency.get("p99"))),
        drops=_int(data.get("drops")),
        frames=_int(data.get("frames")),
    )


@dataclass(frozen=True)
class MetricsMessage:
    snapshot: MetricsSnapshot
    model: ModelSlot | None
    models: dict[str, ModelSlot]
    profile: str | None
    board: str | None


def parse_metrics(doc: dict[str, Any]) -> MetricsMessage:
    """A ``metrics/1`` or ``metrics/2`` message: each figure from its ``metrics/2`` field when
    present, else from the deprecated ``metrics/1`` one (same record for both majors)."""
    seq, boot, ts = _seq_boot_ts(doc, "metrics")
    sources = {k: s for k, v in _capped(doc.get("sources")) if (s := _source(v)) is not None}
    fps = [s.fps for s in sources.values() if s.fps is not None]
    zones = doc.get("temperature_celsius")
    zones = zones if isinstance(zones, dict) else doc.get("temperatures_c")
    temps = {k: t for k, v in _capped(zones) if (t := _num(v)) is not None}
    models = {k: m for k, v in _capped(doc.get("models")) if (m := _model_slot(v)) is not None}
    memory = _dict(doc.get("memory"))
    snapshot = MetricsSnapshot(
        seq=seq,
        boot=boot,
        ts=ts,
        uptime_s=_first(_num(doc.get("uptime_seconds")), _num(doc.get("uptime_s"))),
        fps=sum(fps) if fps else None,
        sources=sources,
        power_w=_first(_num(doc.get("power_watts")), _num(doc.get("power_w"))),
        temperatures_c=temps,
        memory_used_pct=_first(
            _scaled(memory.get("used_ratio"), 100.0), _num(memory.get("used_pct"))
        ),
        gpu_load_pct=_first(
            _scaled(doc.get("gpu_load_ratio"), 100.0), _num(doc.get("gpu_load_pct"))
        ),
        fps_per_w=_first(_num(doc.get("fps_per_watt")), _num(doc.get("fps_per_w"))),
        governor_state=_text(_dict(doc.get("governor")).get("state"), 32),
        spool_dropped=_int(_dict(doc.get("comms")).get("dropped")),
    )
    return MetricsMessage(
        snapshot=snapshot,
        model=_model_slot(doc.get("model")),
        models=models,
        profile=_text(doc.get("profile"), 64),
        board=_text(doc.get("board"), 64),
    )


def parse_ota(doc: dict[str, Any]) -> OtaStatus:
    """An OTA update record (the ``model`` payload, or an ``ota.state`` event's ``data``)."""
    record_id, op = _text(doc.get("id"), 64), _text(doc.get("op"), 16)
    state, updated_at = _text(doc.get("state"), 32), _int(doc.get("updated_at"))
    if record_id is None or op is None or state is None or updated_at is None:
        raise BadMessage("bad_fields", "an OTA record needs id, op, state and updated_at")
    transitions = doc.get("transitions")
    artifact = _dict(doc.get("artifact"))
    gate = _dict(artifact.get("gate"))
    passed = gate.get("passed")
    return OtaStatus(
        id=record_id,
        op=op,
        state=state,
        updated_at=updated_at,
        steps=len(transitions) if isinstance(transitions, list) else 0,  # pyright: ignore[reportUnknownArgumentType]
        model=_text(doc.get("model"), 128),
        version=_int(doc.get("version")),
        reason=_text(doc.get("reason"), 64),
        detail=_text(doc.get("detail"), 1024) or "",
        engine_sha256=_text(artifact.get("engine_sha256"), 128),
        validated_fps=_num(doc.get("validated_fps")),
        baseline_fps=_num(doc.get("baseline_fps")),
        previous_version=_int(_dict(doc.get("previous")).get("version")),
        manifest_sha256=_text(doc.get("manifest_sha256"), 128),
        key_id=_text(doc.get("key_id"), 128),
        gate_passed=passed if isinstance(passed, bool) else None,
        task_drop=_num(gate.get("task_drop")),
    )


@dataclass(frozen=True)
class EventMessage:
    seq: int
    boot: int
    ts: float
    kind: str
    data: dict[str, Any]


def parse_event(doc: dict[str, Any]) -> EventMessage:
    seq, boot, ts = _seq_boot_ts(doc, "event")
    kind = _text(doc.get("kind"), 64)
    if kind is None:
        raise BadMessage("bad_fields", "an event needs a kind")
    return EventMessage(seq=seq, boot=boot, ts=ts, kind=kind, data=_dict(doc.get("data")))
