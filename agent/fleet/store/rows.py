"""What every fleet store writes for a rollout: its indexed columns and its JSON text.

A store reads only ``fleet``, ``state``, ``created_at`` (and ``updated_at`` when present) from a
rollout document; the rest is opaque to it. Documents come from :mod:`agent.fleet.rollout`, never
from the network, so a document without those fields is a bug (:class:`InternalError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.core.errors import InternalError

__all__ = ["ROLLOUT_SCHEMA_COMPONENT", "RolloutRow", "load_doc", "rollout_row"]

ROLLOUT_SCHEMA_COMPONENT = "rollouts"


@dataclass(frozen=True)
class RolloutRow:
    """The columns of one ``rollouts`` row (``id`` apart)."""

    fleet: str
    state: str
    created_at: float
    updated_at: float
    doc: str


def rollout_row(doc: dict[str, Any]) -> RolloutRow:
    """The row of ``doc``; :class:`InternalError` when it lacks the indexed fields."""
    fleet, state = doc.get("fleet"), doc.get("state")
    if not isinstance(fleet, str) or not isinstance(state, str):
        raise InternalError(
            f"a rollout document needs str fleet and state, got {fleet!r}, {state!r}"
        )
    created = _time(doc, "created_at", None)
    updated = _time(doc, "updated_at", created)
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return RolloutRow(fleet, state, created, updated, text)


def load_doc(text: str) -> dict[str, Any]:
    """The document stored as ``text`` (written by :func:`rollout_row`)."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise InternalError(f"a stored rollout document is a {type(doc).__name__}, not an object")
    return doc


def _time(doc: dict[str, Any], key: str, default: float | None) -> float:
    value = doc.get(key, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InternalError(f"a rollout document needs a numeric {key}, got {value!r}")
