"""The JSON bodies of the agent's MQTT messages (see ``docs/telemetry.md``).

Every payload is a JSON object with a ``schema`` string ``edge-agent/<kind>/<major>``; a consumer
accepts the majors it knows and ignores unknown fields. The builders take plain dicts from the
daemon, validate them (unknown keys are errors, like the config) and return compact JSON bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    StrictBool,
    ValidationError,
)

from agent.core.errors import CommsError
from agent.core.jsonlimits import sanitize_text

SCHEMA_STATE = "edge-agent/state/1"
SCHEMA_METRICS = "edge-agent/metrics/2"
SCHEMA_METRICS_V1 = "edge-agent/metrics/1"
"""The previous metrics major: its fields are all kept (deprecated) in ``metrics/2``."""
METRICS_SCHEMAS = (SCHEMA_METRICS, SCHEMA_METRICS_V1)
SCHEMA_EVENT = "edge-agent/event/1"
SCHEMA_DETECTIONS = "edge-agent/detections/1"
SCHEMA_MODEL = "edge-agent/model/1"
SCHEMA_CMD_RESPONSE = "edge-agent/cmd-response/1"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Quantile = Literal["0.5", "0.9", "0.99"]
"""A percentile as Prometheus writes it (``quantile="0.5"``), the key of the ``*_seconds`` maps."""


class LatencyMs(_Payload):
    """Deprecated (``metrics/1``): use the ``latency_seconds`` map."""

    p50: float | None = Field(default=None, ge=0, description="Median latency, ms.")
    p90: float | None = Field(default=None, ge=0, description="90th percentile, ms.")
    p99: float | None = Field(default=None, ge=0, description="99th percentile, ms.")


class SourceMetrics(_Payload):
    state: str = Field(description="Source state machine state (e.g. running, stalled).")
    fps: float = Field(default=0.0, ge=0, description="Frames served per second.")
    latency_ms: LatencyMs = Field(
        default_factory=LatencyMs, description="Deprecated: end-to-end latency, ms."
    )
    latency_seconds: dict[Quantile, NonNegativeFloat] | None = Field(
        default=None, description="End-to-end latency percentiles, s, by quantile."
    )
    drops: int = Field(default=0, ge=0, description="Frames dropped since start (counter).")
    frames: int = Field(default=0, ge=0, description="Frames served since start (counter).")


class MemoryMetrics(_Payload):
    used_mib: float | None = Field(default=None, ge=0, description="Deprecated: used, MiB.")
    total_mib: float | None = Field(default=None, ge=0, description="Deprecated: total, MiB.")
    used_pct: float | None = Field(default=None, ge=0, le=100, description="Deprecated: used, %.")
    used_bytes: int | None = Field(default=None, ge=0, description="Used memory, bytes.")
    total_bytes: int | None = Field(default=None, ge=0, description="Total memory, bytes.")
    used_ratio: float | None = Field(default=None, ge=0, le=1, description="Used share, 0-1.")


class SwapMetrics(_Payload):
    used_bytes: int = Field(ge=0, description="Used swap, bytes.")
    total_bytes: int = Field(ge=0, description="Total swap, bytes (0: no swap).")


class ModelInfo(_Payload):
    name: str = Field(description="Active model name.")
    version: int | None = Field(default=None, ge=0, description="Bundle version.")
    precision: str | None = Field(default=None, description="int8 | fp16 | fp32.")
    engine_hash: str | None = Field(default=None, description="SHA-256 of the serving engine.")


class CommsInfo(_Payload):
    spooled: int = Field(ge=0, description="Messages in the spool, not yet acknowledged.")
    dropped: int = Field(ge=0, description="Messages dropped because the spool was full.")
    sent: int = Field(ge=0, description="Spooled messages acknowledged since start.")
    expired: int | None = Field(
        default=None, ge=0, description="Spooled messages dropped as too old since start."
    )


class GovernorInfo(_Payload):
    state: str = Field(description="Governor level (normal, throttled, critical...).")
    workers: int | None = Field(default=None, ge=0, description="Worker streams allowed.")
    fps_cap: float | None = Field(default=None, ge=0, description="Current fps cap.")
    builds_allowed: bool | None = Field(default=None, description="Engine builds admitted.")


class OtaInfo(_Payload):
    state: str = Field(description="The last OTA record's state (received ... active, failed).")
    op: str | None = Field(default=None, description="update | rollback | resume.")
    model: str | None = Field(default=None, description="Model of the update.")
    version: int | None = Field(default=None, ge=0, description="Version being installed.")
    reason: str | None = Field(default=None, description="Cause of a failed/rejected state.")


class MetricsBody(_Payload):
    """What the daemon passes to ``publish_metrics`` (all optional; ``metrics/2``). The
    ``metrics/1`` fields (``*_s``, ``*_ms``, ``*_mib``, ``*_pct``, ``power_w``, ``fps_per_w``,
    ``temperatures_c``) are kept for one major, deprecated, beside their base-unit twins."""

    uptime_s: float | None = Field(default=None, ge=0, description="Deprecated: uptime, s.")
    uptime_seconds: float | None = Field(default=None, ge=0, description="Agent uptime, s.")
    profile: str | None = Field(default=None, max_length=64, description="Profile in force.")
    board: str | None = Field(
        default=None, max_length=128, description="Board model (device tree) or host platform."
    )
    sources: dict[str, SourceMetrics] = Field(default_factory=dict, description="Per source.")
    stages_ms: dict[str, float] = Field(
        default_factory=dict, description="Deprecated: median time per pipeline stage, ms."
    )
    stage_seconds: dict[str, dict[Quantile, NonNegativeFloat]] | None = Field(
        default=None, description="Time per pipeline stage, s, by quantile."
    )
    power_w: float | None = Field(default=None, ge=0, description="Deprecated: board power, W.")
    power_watts: float | None = Field(default=None, ge=0, description="Board input power, W.")
    power_rail_watts: dict[str, NonNegativeFloat] | None = Field(
        default=None, description="Power per rail, W."
    )
    temperatures_c: dict[str, float] = Field(
        default_factory=dict, description="Deprecated: thermal zones, °C."
    )
    temperature_celsius: dict[str, float] | None = Field(
        default=None, description="Thermal zones, °C."
    )
    memory: MemoryMetrics | None = Field(default=None, description="Memory use.")
    swap: SwapMetrics | None = Field(default=None, description="Swap use.")
    gpu_load_pct: float | None = Field(default=None, ge=0, le=100, description="Deprecated: %.")
    gpu_load_ratio: float | None = Field(default=None, ge=0, le=1, description="GPU load, 0-1.")
    cpu_load_ratio: float | None = Field(default=None, ge=0, le=1, description="CPU load, 0-1.")
    fps_per_w: float | None = Field(default=None, ge=0, description="Deprecated: fps / W.")
    fps_per_watt: float | None = Field(default=None, ge=0, description="Total fps / power.")
    throttled: dict[str, StrictBool] | None = Field(
        default=None, description="Throttle reasons and whether each is active."
    )
    power_mode: str | None = Field(default=None, description="nvpmodel power mode name.")
    model: ModelInfo | None = Field(default=None, description="Serving model (the first).")
    models: dict[str, ModelInfo] = Field(
        default_factory=dict, description="Every served model, by name."
    )
    governor: GovernorInfo | None = Field(default=None, description="Governor state.")
    comms: CommsInfo | None = Field(default=None, description="Store-and-forward counters.")
    ota: OtaInfo | None = Field(default=None, description="The last OTA record's state.")


def _dump(obj: dict[str, Any]) -> bytes:
    # "replace": a lone surrogate that slipped into a string (a name from the network) becomes
    # "?" instead of failing the publish; the senders sanitize names first (sanitize_text)
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", "replace")


def _validate(model: type[_Payload], data: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        return model.model_validate(data).model_dump(exclude_none=True)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise CommsError(
            f"invalid {what} payload: {loc}: {first['msg']}",
            fix="pass only the documented fields (docs/telemetry.md) with their types",
        ) from err


def state_payload(
    state: Literal["online", "offline"],
    *,
    device: str,
    boot: int,
    reason: str | None = None,
    ts: float | None = None,
    version: str | None = None,
    group: str | None = None,
) -> bytes:
    """Retained ``.../state``: birth (online) or last will / clean shutdown (offline);
    ``group`` is the device's ``mqtt.group`` (optional field, when set)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA_STATE,
        "state": state,
        "device": device,
        "boot": boot,
        "ts": round(time.time() if ts is None else ts, 3),
    }
    if reason is not None:
        doc["reason"] = reason
    if version is not None:
        doc["version"] = version
    if group is not None:
        doc["group"] = group
    return _dump(doc)


def payload_ts(payload: bytes) -> float | None:
    """The ``ts`` of a payload built here (a spooled metrics or event message), or None when it
    has none: how old a stored message is."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    ts = doc.get("ts") if isinstance(doc, dict) else None
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


def validate_metrics(body: dict[str, Any]) -> dict[str, Any]:
    """The metrics dict checked against :class:`MetricsBody` (CommsError on unknown fields)."""
    return _validate(MetricsBody, body, "metrics")


def metrics_payload(
    body: dict[str, Any],
    *,
    device: str,
    boot: int,
    seq: int,
    ts: float,
    validate: bool = True,
    schema: str = SCHEMA_METRICS,
) -> bytes:
    """``.../metrics``: the daemon's figures plus schema, device, boot, seq, ts. ``schema`` is
    one of :data:`METRICS_SCHEMAS` (``SCHEMA_METRICS_V1`` for a sender of ``metrics/1`` fields
    only, like an old agent)."""
    if schema not in METRICS_SCHEMAS:
        raise CommsError(f"unknown metrics schema {schema!r}", fix=f"use one of {METRICS_SCHEMAS}")
    doc = validate_metrics(body) if validate else body
    return _dump({"schema": schema, "device": device, "boot": boot, "seq": seq, "ts": ts, **doc})


def event_payload(
    kind: str, data: dict[str, Any], *, device: str, boot: int, seq: int, ts: float
) -> bytes:
    """``.../events``: ``kind`` (e.g. ``source.state``) and free-form JSON ``data``."""
    if not kind or len(kind) > 64:
        raise CommsError(f"event kind {kind!r} is empty or too long", fix="use a short dotted name")
    return _dump(
        {
            "schema": SCHEMA_EVENT,
            "device": device,
            "boot": boot,
            "seq": seq,
            "ts": ts,
            "kind": kind,
            "data": data,
        }
    )


def detections_payload(
    source: str,
    detections: list[dict[str, Any]],
    *,
    device: str,
    seq: int,
    ts: float,
    frame_ts: float | None = None,
) -> bytes:
    """``.../detections``: one frame's results of one source."""
    doc: dict[str, Any] = {
        "schema": SCHEMA_DETECTIONS,
        "device": device,
        "seq": seq,
        "ts": ts,
        "source": source,
        "detections": detections,
    }
    if frame_ts is not None:
        doc["frame_ts"] = frame_ts
    return _dump(doc)


def model_payload(data: dict[str, Any], *, device: str, ts: float) -> bytes:
    """Retained ``.../model``: the OTA code's model state (free-form, JSON-serialisable)."""
    return _dump({"schema": SCHEMA_MODEL, "device": device, "ts": ts, **data})


def response_payload(
    *,
    request_id: str | None,
    command: str | None,
    device: str,
    ok: bool,
    result: Any = None,
    error_code: str | None = None,
    error: str | None = None,
    ts: float | None = None,
    retry_after_s: float | None = None,
) -> bytes:
    """``.../cmd/response``: the answer to one request, carrying its ``id``; ``retry_after_s``
    with the ``busy`` and ``rate_limited`` errors. The command name and the message (both may
    come from the network) are sanitized."""
    doc: dict[str, Any] = {
        "schema": SCHEMA_CMD_RESPONSE,
        "device": device,
        "id": request_id,
        "command": None if command is None else sanitize_text(command, max_len=64),
        "ok": ok,
        "ts": round(time.time() if ts is None else ts, 3),
    }
    if ok:
        doc["result"] = result
    else:
        message = sanitize_text(error or "", max_len=1024)
        doc["error"] = {"code": error_code or "failed", "message": message}
    if retry_after_s is not None:
        doc["retry_after_s"] = round(retry_after_s, 1)
    return _dump(doc)
