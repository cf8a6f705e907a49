"""The rollout's two state machines, each one declared table.

A rollout: ``planned → running ⇄ paused → completed | aborted``. A device within it:
``pending → in_progress → active | failed | rolled_back | offline``; ``offline`` is left again
when the device returns and reports; ``active`` may still become ``rolled_back`` (probation
fails after the metrics showed the new version, or our rollback command). The engine moves
states only through :func:`check_transition` (an illegal step is a bug: ``InternalError``);
operator controls check :func:`allowed` first and answer a user error (see ``engine.control``).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from agent.core.errors import InternalError
from agent.core.statemachine import table

__all__ = [
    "DEVICE_FINAL",
    "DEVICE_TRANSITIONS",
    "ROLLOUT_TRANSITIONS",
    "DeviceState",
    "RolloutState",
    "allowed",
    "check_transition",
]


class RolloutState(str, Enum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class DeviceState(str, Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    OFFLINE = "offline"


R, D = RolloutState, DeviceState

ROLLOUT_TRANSITIONS = table(
    {
        R.PLANNED: (R.RUNNING, R.PAUSED, R.ABORTED),
        R.RUNNING: (R.PAUSED, R.COMPLETED, R.ABORTED),
        R.PAUSED: (R.RUNNING, R.ABORTED),
    }
)

DEVICE_TRANSITIONS = table(
    {
        D.PENDING: (D.IN_PROGRESS, D.ACTIVE, D.FAILED, D.ROLLED_BACK, D.OFFLINE),
        D.IN_PROGRESS: (D.ACTIVE, D.FAILED, D.ROLLED_BACK, D.OFFLINE),
        D.OFFLINE: (D.IN_PROGRESS, D.ACTIVE, D.FAILED, D.ROLLED_BACK),
        D.ACTIVE: (D.ROLLED_BACK,),
    }
)

DEVICE_FINAL = frozenset({D.ACTIVE, D.FAILED, D.ROLLED_BACK, D.OFFLINE})
"""States that no longer block a wave (``offline`` included)."""

S = TypeVar("S", RolloutState, DeviceState)


def allowed(old: S, new: S) -> bool:
    if isinstance(old, RolloutState):
        return new in ROLLOUT_TRANSITIONS.get(old, frozenset())
    return new in DEVICE_TRANSITIONS.get(old, frozenset())


def check_transition(old: S, new: S, what: str = "") -> S:
    """``new`` when the table allows ``old → new``; else :class:`InternalError`."""
    if not allowed(old, new):
        kind = "rollout" if isinstance(old, RolloutState) else "device"
        where = f" ({what})" if what else ""
        raise InternalError(f"{kind}{where}: illegal transition {old.value!r} -> {new.value!r}")
    return new
