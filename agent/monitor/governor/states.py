"""The governor's two tracks and their declared transition tables.

* **memory**: ``NORMAL`` → ``MEMORY_HIGH`` → ``MEMORY_CRITICAL``, recovering one step at a time.
* **thermal**: ``NORMAL`` → ``THERMAL_FPS`` → ``THERMAL_POOL``; self-loops are further steps
  within a state (another ×0.75 on the fps cap, another worker less).

Each track is one :class:`~agent.core.statemachine.StateMachine`; an illegal step is a bug and
raises :class:`~agent.core.errors.InternalError`.
"""

from __future__ import annotations

import enum

from agent.core.statemachine import StateMachine, table


class GovernorState(enum.Enum):
    NORMAL = "normal"
    MEMORY_HIGH = "memory_high"
    MEMORY_CRITICAL = "memory_critical"
    THERMAL_FPS = "thermal_fps"  # fps cap lowered (temperature or power over budget)
    THERMAL_POOL = "thermal_pool"  # pool shrunk for heat/power (fps cap at its floor, or critical)


class Track(enum.Enum):
    MEMORY = "memory"
    THERMAL = "thermal"


SEVERITY = {
    GovernorState.NORMAL: 0,
    GovernorState.THERMAL_FPS: 1,
    GovernorState.THERMAL_POOL: 2,
    GovernorState.MEMORY_HIGH: 3,
    GovernorState.MEMORY_CRITICAL: 4,
}

_S = GovernorState
MEMORY_TRANSITIONS = table(
    {
        _S.NORMAL: {_S.MEMORY_HIGH, _S.MEMORY_CRITICAL},
        _S.MEMORY_HIGH: {_S.MEMORY_CRITICAL, _S.NORMAL},
        _S.MEMORY_CRITICAL: {_S.MEMORY_HIGH},  # recovery is one step at a time
    }
)
THERMAL_TRANSITIONS = table(
    {
        # NORMAL → THERMAL_POOL: temp ≥ critical, or no fps stage (max_fps unknown).
        _S.NORMAL: {_S.THERMAL_FPS, _S.THERMAL_POOL},
        # Self-loops are further steps within the state (another ×0.75, another worker).
        _S.THERMAL_FPS: {_S.THERMAL_FPS, _S.THERMAL_POOL, _S.NORMAL},
        # → THERMAL_FPS once the pool is whole again; → NORMAL only when no fps step is left.
        _S.THERMAL_POOL: {_S.THERMAL_POOL, _S.THERMAL_FPS, _S.NORMAL},
    }
)


def track_machine(track: Track) -> StateMachine[GovernorState]:
    """A fresh machine for ``track``, starting at ``NORMAL``."""
    rows = MEMORY_TRANSITIONS if track is Track.MEMORY else THERMAL_TRANSITIONS
    return StateMachine(f"governor.{track.value}", rows, GovernorState.NORMAL)


def more_severe(a: GovernorState, b: GovernorState) -> GovernorState:
    return max(a, b, key=SEVERITY.__getitem__)
