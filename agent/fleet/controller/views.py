"""What the API answers, built from typed records, and what it accepts to start a rollout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.fleet import RolloutDefaults
from agent.core.errors import EdgeAgentError
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.spec import RolloutSpec, parse_spec

__all__ = ["StartRequest", "device_json", "parse_start"]

_START_KEYS = frozenset({"spec", "key_path"})


def device_json(record: DeviceRecord, now: float, offline_after_s: float) -> dict[str, Any]:
    """:meth:`DeviceRecord.to_json` with ``seen_ago_s`` and the derived ``online`` (the device
    said it is online and was heard from within ``offline_after_s``); ``reported_online`` is
    what its last birth / will message said."""
    doc = record.to_json()
    ago = max(0.0, now - record.last_seen)
    doc["reported_online"] = record.online
    doc["online"] = record.online and ago <= offline_after_s
    doc["seen_ago_s"] = round(ago, 3)
    doc["engine_hash"] = record.engine_hash
    return doc


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
