"""Source states, their one transition table, and the typed records a source reports.

States and the transitions allowed between them (anything else is a bug)::

    IDLE ─► CONNECTING ─► STREAMING ─► STALLED ─► RECONNECTING ─► CONNECTING ...
                 │             ├──────────────────────▲ (disconnect / read error)
                 │             └─► ENDED (end of a file that does not loop)
                 └─► RECONNECTING (open failed)        any live state ─► FAILED | STOPPED
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from agent.core.errors import InternalError
from agent.core.logs import log_fields
from agent.core.redact import redact_text
from agent.core.statemachine import StateMachine, table

log = logging.getLogger(__name__)


class SourceState(str, enum.Enum):
    IDLE = "idle"  # built, not started
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a file or folder reached its end (terminal)
    FAILED = "failed"  # gave up, or can never work here (terminal)
    STOPPED = "stopped"  # stop() was called (terminal)


_S = SourceState
TERMINAL: frozenset[SourceState] = frozenset({_S.ENDED, _S.FAILED, _S.STOPPED})
TRANSITIONS: dict[SourceState, frozenset[SourceState]] = table(
    {
        _S.IDLE: {_S.CONNECTING, _S.FAILED, _S.STOPPED},
        _S.CONNECTING: {_S.STREAMING, _S.RECONNECTING, _S.ENDED, _S.FAILED, _S.STOPPED},
        _S.STREAMING: {_S.STALLED, _S.RECONNECTING, _S.ENDED, _S.FAILED, _S.STOPPED},
        _S.STALLED: {_S.RECONNECTING, _S.STREAMING, _S.FAILED, _S.STOPPED},
        _S.RECONNECTING: {_S.CONNECTING, _S.FAILED, _S.STOPPED},
        _S.ENDED: set(),
        _S.FAILED: set(),
        _S.STOPPED: set(),
    }
)


@dataclass(frozen=True)
class SourceStatus:
    """A typed status event. ``kind`` is ``"transition"`` (``old → new``) or ``"frame"``
    (a frame was rejected; ``old == new``). ``uri`` and ``reason`` are already redacted."""

    source: str
    old: SourceState
    new: SourceState
    reason: str
    uri: str
    attempt: int
    ts: float  # time.time()
    kind: Literal["transition", "frame"] = "transition"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "old": self.old.value,
            "new": self.new.value,
            "reason": self.reason,
            "uri": self.uri,
            "attempt": self.attempt,
            "ts": self.ts,
        }


@dataclass(frozen=True)
class SourceStats:
    state: SourceState
    frames: int  # frames put into the queue
    dropped: int  # dropped by the queue's NEWEST_WINS policy
    invalid: int  # rejected by validation (wrong channels/dtype/size, unreadable image)
    reconnects: int
    fps: float  # over the last ``window_s`` seconds
    last_frame_age_s: float | None  # None before the first frame


class SourceStateMachine:
    """The state of one source: a :class:`StateMachine` over :data:`TRANSITIONS`. ``to()``
    returns the status event of a legal move; an illegal one raises :class:`InternalError`
    when ``strict`` (tests, debugging) and otherwise is logged as an error and ignored (the
    daemon keeps running)."""

    def __init__(self, name: str, uri: str, *, strict: bool = False) -> None:
        self.name = name
        self.uri = redact_text(uri)
        self.strict = strict
        self._machine = StateMachine(f"source {name}", TRANSITIONS, SourceState.IDLE)

    @property
    def state(self) -> SourceState:
        return self._machine.state

    def to(self, new: SourceState, reason: str, *, attempt: int = 0) -> SourceStatus | None:
        try:
            old = self._machine.to(new, redact_text(reason))
            illegal = old is new  # a self-loop is never declared here: the machine ignored it
        except InternalError:
            old, illegal = self._machine.state, True
        if illegal:
            self._illegal(old, new, reason)
            return None
        return SourceStatus(
            source=self.name, old=old, new=new, reason=redact_text(reason), uri=self.uri,
            attempt=attempt, ts=time.time(),
        )  # fmt: skip

    def _illegal(self, old: SourceState, new: SourceState, reason: str) -> None:
        message = f"illegal source state transition {old.value} → {new.value}"
        if self.strict:
            allowed = ", ".join(s.value for s in TRANSITIONS[old]) or "none (terminal)"
            raise InternalError(f"{message}; allowed from {old.value}: {allowed}")
        log.error(
            "source %s: %s (%s)", self.name, message, redact_text(reason),
            extra=log_fields(source=self.name, old=old.value, new=new.value),
        )  # fmt: skip
