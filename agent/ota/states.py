"""The states of one update and its transition table (the only place the graph is written).

::

    received → verified → downloaded → building → validating → activating → probation → active
        └→ rejected   └→ rejected / failed   └→ failed  ...              └→ rolled_back / failed

Every non-terminal state may also go to ``failed``. A record starts in one of :data:`INITIAL`:
a push (received), a resumed update (verified/downloaded), an operator rollback (building).
"""

from __future__ import annotations

from enum import Enum

from agent.core.statemachine import StateMachine, table


class UpdateState(str, Enum):
    RECEIVED = "received"
    VERIFIED = "verified"
    DOWNLOADED = "downloaded"
    BUILDING = "building"
    VALIDATING = "validating"
    ACTIVATING = "activating"
    PROBATION = "probation"
    ACTIVE = "active"
    REJECTED = "rejected"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S = UpdateState
TERMINAL = frozenset({S.ACTIVE, S.REJECTED, S.FAILED, S.ROLLED_BACK})
INITIAL = frozenset({S.RECEIVED, S.VERIFIED, S.DOWNLOADED, S.BUILDING})
#: the states whose outcome leaves the pushed version unusable (its number is burnt)
UNSUCCESSFUL = frozenset({S.REJECTED, S.FAILED, S.ROLLED_BACK})
TRANSITIONS: dict[UpdateState, frozenset[UpdateState]] = table(
    {
        S.RECEIVED: {S.VERIFIED, S.REJECTED, S.FAILED},
        S.VERIFIED: {S.DOWNLOADED, S.REJECTED, S.FAILED},
        S.DOWNLOADED: {S.BUILDING, S.FAILED},
        S.BUILDING: {S.VALIDATING, S.ACTIVATING, S.FAILED},
        S.VALIDATING: {S.ACTIVATING, S.FAILED},
        S.ACTIVATING: {S.PROBATION, S.ROLLED_BACK, S.FAILED},
        S.PROBATION: {S.ACTIVE, S.ROLLED_BACK, S.FAILED},
        S.ACTIVE: set(),
        S.REJECTED: set(),
        S.FAILED: set(),
        S.ROLLED_BACK: set(),
    }
)


def update_machine(state: UpdateState) -> StateMachine[UpdateState]:
    """A machine over :data:`TRANSITIONS` standing in ``state`` (a new record's initial state,
    or the state a journal was found in); an illegal step raises ``InternalError``."""
    return StateMachine("OTA update", TRANSITIONS, state)
