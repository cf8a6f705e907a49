"""What the API answers, built from typed records, and what it accepts to start a rollout.

A device's ``status`` is ``offline`` unless it is online (said so, heard from within
``rollouts.offline_after_s``); an online device is ``degraded`` when its governor is not
``normal``, a source is not ``streaming``, its last OTA update ended ``failed`` or
``rolled_back`` within the last hour, or nothing was heard from it for :data:`STALE_S` (its
usual metrics interval is not known to the controller, so the contract's fallback of 60 s is
the bound; a device that never sent metrics is degraded 60 s after it was first seen).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.fleet import RolloutDefaults
from agent.core.errors import EdgeAgentError
from agent.fleet.history.records import figures
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.spec import RolloutSpec, parse_spec

__all__ = [
    "STALE_S",
    "StartRequest",
    "degraded_reasons",
    "device_json",
    "parse_start",
    "summary_json",
]

STALE_S = 60.0
"""An online device not heard from for this long is degraded."""
OTA_FAILURE_WINDOW_S = 3600.0
"""A failed or rolled-back update makes its device degraded for this long."""
_OTA_FAILED = ("failed", "rolled_back")

_START_KEYS = frozenset({"spec", "key_path"})


def degraded_reasons(record: DeviceRecord, now: float) -> list[str]:
    """Why an online device counts as degraded (empty: it does not)."""
    reasons: list[str] = []
    metrics = record.metrics
    if metrics is not None and metrics.governor_state not in (None, "normal"):
        reasons.append(f"governor {metrics.governor_state}")
    if metrics is not None:
        reasons += [
            f"source {n} {s.state}" for n, s in metrics.sources.items() if s.state != "streaming"
        ]
    ota = record.ota
    if (
        ota is not None
        and ota.state in _OTA_FAILED
        and now - ota.updated_at <= OTA_FAILURE_WINDOW_S
    ):
        reasons.append(f"update {ota.state}")
    if now - record.last_seen > STALE_S:
        reasons.append("metrics stale")
    elif metrics is None and now - record.first_seen > STALE_S:
        reasons.append("no metrics")
    return reasons


def device_json(record: DeviceRecord, now: float, offline_after_s: float) -> dict[str, Any]:
    """:meth:`DeviceRecord.to_json` with ``seen_ago_s``, the derived ``online`` (the device
    said it is online and was heard from within ``offline_after_s``), ``status``
    (``online|offline|degraded``, ``status_reasons``) and flat display fields; ``reported_online``
    is what its last birth / will message said."""
    doc = record.to_json()
    ago = max(0.0, now - record.last_seen)
    online = record.online and ago <= offline_after_s
    reasons = degraded_reasons(record, now) if online else []
    fig = figures(record.metrics)
    model = record.model
    doc.update(
        reported_online=record.online,
        online=online,
        status="offline" if not online else "degraded" if reasons else "online",
        status_reasons=reasons,
        seen_ago_s=round(ago, 3),
        engine_hash=record.engine_hash,
        fps=fig.fps,
        latency_p50_ms=fig.latency_p50_ms,
        latency_p99_ms=fig.latency_p99_ms,
        power_w=fig.power_w,
        temp_max_c=fig.temp_max_c,
        memory_used_pct=fig.memory_used_pct,
        governor_state=None if record.metrics is None else record.metrics.governor_state,
        ota_state=None if record.ota is None else record.ota.state,
        model_name=None if model is None else model.name,
        model_version=None if model is None else model.version,
        model_precision=None if model is None else model.precision,
    )
    return doc


def summary_json(
    fleet: str, devices: Sequence[dict[str, Any]], rollouts: list[dict[str, Any]], now: float
) -> dict[str, Any]:
    """``GET /api/summary`` from the device answers (:func:`device_json`) and the status of
    the rollouts planned, running or paused."""
    statuses = Counter(str(d["status"]) for d in devices)
    models = Counter(
        (d["model_name"], d["model_version"], d["model_precision"])
        for d in devices
        if d["model_name"] is not None
    )
    ranked = sorted(models.items(), key=lambda kv: (-kv[1], str(kv[0][0]), str(kv[0][1])))
    return {
        "fleet": fleet,
        "devices": {
            "total": len(devices),
            **{s: statuses.get(s, 0) for s in ("online", "offline", "degraded")},
        },
        "models": [
            {"name": n, "version": v, "precision": p, "devices": count}
            for (n, v, p), count in ranked
        ],
        "rollouts": rollouts,
        "ts": now,
    }


@dataclass(frozen=True)
class StartRequest:
    spec: RolloutSpec
    key_path: Path


def parse_start(body: dict[str, Any], defaults: RolloutDefaults) -> StartRequest:
    """``{"spec": {...}, "key_path": "/abs/key"}`` → :class:`StartRequest`; the fleet's rollout
    defaults fill what the spec leaves out."""
    unknown = sorted(set(body) - _START_KEYS)
    if unknown:
        raise EdgeAgentError(
            f"unknown field(s) in the request: {', '.join(unknown)}",
            fix='send {"spec": {...}, "key_path": "/path/on/the/controller/key"}',
        )
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise EdgeAgentError(
            "the request has no spec object", fix='send {"spec": {"bundle": ..., "version": N}}'
        )
    key = body.get("key_path")
    if not isinstance(key, str) or not key or not Path(key).is_absolute() or "\x00" in key:
        raise EdgeAgentError(
            "key_path must be the absolute path of the signing key on the controller's host",
            fix="pass --key with a path the controller can read",
        )
    return StartRequest(parse_spec(spec, defaults), Path(key))  # pyright: ignore[reportUnknownArgumentType]
