"""What the governor decided: its actions, the decision the actuator applies, and the event
that records one action (what, why, the reading that caused it)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from agent.monitor.governor.states import GovernorState, Track


class Action(str, enum.Enum):
    """One governor action; compares, prints and formats as its wire name (``"fps_lower"``)."""

    MEMORY_HIGH = "memory_high"  # NORMAL → MEMORY_HIGH: pool − 1, hold builds
    MEMORY_CRITICAL = "memory_critical"  # → MEMORY_CRITICAL: pool 1, shed frames, hold builds
    MEMORY_EASED = "memory_eased"  # MEMORY_CRITICAL → MEMORY_HIGH: stop shedding, pool streams − 1
    MEMORY_RECOVERED = "memory_recovered"  # MEMORY_HIGH → NORMAL: full pool, builds allowed
    FPS_LOWER = "fps_lower"  # thermal: fps cap × 0.75 (floor)
    POOL_SHRINK = "pool_shrink"  # thermal: one worker less
    POOL_GROW = "pool_grow"  # thermal recovery: one worker more
    FPS_RAISE = "fps_raise"  # thermal recovery: fps cap ÷ 0.75, lifted (None) at the last step

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)


@dataclass(frozen=True)
class Decision:
    """What the actuator should apply. ``fps_cap`` None = uncapped."""

    pool_size: int
    fps_cap: float | None
    builds_allowed: bool
    shed_frames: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GovernorEvent:
    """One action: what (``action``), why (``reason``), the reading that caused it.

    ``from_state``/``to_state`` are the states of the ``track`` ("memory" or "thermal") that
    acted; ``decision`` is the combined decision after the action; ``ts`` is the governor clock.
    """

    ts: float
    action: Action
    reason: str
    reading: dict[str, Any]
    track: str
    from_state: GovernorState
    to_state: GovernorState
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "action": self.action.value,
            "reason": self.reason,
            "reading": dict(self.reading),
            "track": self.track,
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
            "decision": self.decision.to_json(),
        }


@dataclass(frozen=True)
class Step:
    """One action the decision core chose: ``track`` moves to ``target``."""

    track: Track
    target: GovernorState
    action: Action
    reason: str
