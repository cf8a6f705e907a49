"""The update in progress: its record, its state machine, the journal and the publisher.

Every change is journalled, then published (a failing publisher never breaks an update).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agent.core.errors import InternalError, OtaError, OtaReason, OtaRejected
from agent.core.logs import log_fields
from agent.core.statemachine import StateMachine
from agent.ota.control import StepFailed
from agent.ota.journal import Journal
from agent.ota.ports import StatePublisher
from agent.ota.record import Transition, UpdateRecord
from agent.ota.states import INITIAL, TERMINAL, UNSUCCESSFUL, UpdateState, update_machine

log = logging.getLogger(__name__)


class UpdateTracker:
    def __init__(self, journal: Journal, publisher: StatePublisher, clock: Callable[[], float]):
        self.journal = journal
        self.publisher = publisher
        self.clock = clock
        self._lock = threading.RLock()
        self._record: UpdateRecord | None = None
        self._machine: StateMachine[UpdateState] | None = None

    # -- reading

    def last(self) -> UpdateRecord | None:
        """The current record, else the journalled one."""
        with self._lock:
            return self._record if self._record is not None else self.journal.read()

    def status(self) -> dict[str, Any] | None:
        """The current/last record as published."""
        with self._lock:
            rec = self.last()
            return None if rec is None else rec.public_json()

    def state(self) -> UpdateState | None:
        with self._lock:
            return None if self._record is None else self._record.state

    # -- changing

    def begin(self, op: str, state: UpdateState, **fields: Any) -> UpdateRecord:
        if state not in INITIAL:
            raise InternalError(f"an OTA update cannot start in {state.value}")
        now = int(self.clock())
        rec = UpdateRecord(
            id=uuid.uuid4().hex[:12],
            op=op,
            state=state,
            started_at=now,
            updated_at=now,
            transitions=[Transition(state, now, None)],
        )
        rec.set(**fields)
        with self._lock:
            self.adopt(rec)
            self._persist_and_publish(rec)
        return rec

    def adopt(self, rec: UpdateRecord) -> None:
        """Make ``rec`` (e.g. found in the journal) the current record, in its state."""
        with self._lock:
            self._record = rec
            self._machine = update_machine(rec.state)

    def update(self, **fields: Any) -> None:
        """Change fields of the current record without a transition (persisted); a None
        ``waiting_for`` stays on the wire (null) until the next transition."""
        with self._lock:
            rec = self._current()
            rec.set(**fields)
            self._persist_and_publish(rec)

    def transition(self, state: UpdateState, reason: str | None = None, detail: str = "") -> None:
        reason = None if reason is None else str(reason)
        # a detail may quote names from a (signed) manifest: keep it publishable
        detail = detail.encode("utf-8", "replace").decode("utf-8", "replace")[:4000]
        with self._lock:
            rec = self._current()
            assert self._machine is not None
            self._machine.to(state, reason or "")
            now = int(self.clock())
            rec.state, rec.reason, rec.detail, rec.updated_at = state, reason, detail, now
            rec.clear("waiting_for", "progress")
            rec.transitions.append(Transition(state, now, reason))
            self._persist_and_publish(rec)
        level = logging.WARNING if state in UNSUCCESSFUL else logging.INFO
        log.log(
            level,
            f"OTA {rec.model} v{rec.version}: {state.value}",
            extra=log_fields(
                update=rec.id,
                model=rec.model,
                version=rec.version,
                state=state.value,
                reason=reason,
                detail=detail,
            ),
        )

    def finish_error(self, state: UpdateState, reason: str, detail: str) -> None:
        """End the current update in ``state`` (failed where rejected is no longer possible)."""
        current = self.state()
        if current is None or current in TERMINAL:
            return
        machine = self._machine
        if state is UpdateState.REJECTED and machine and not machine.allowed(state):
            state = UpdateState.FAILED
        self.transition(state, reason, detail)

    @contextlib.contextmanager
    def ending_errors(self, what: str, *, ota_errors: bool = True) -> Iterator[None]:
        """Turn whatever a stage raises (except :class:`Stopped`) into the end of the update;
        ``ota_errors=False``: an ``OtaError`` counts as unexpected (``internal_error``)."""
        try:
            yield
        except StepFailed as exc:
            self.finish_error(exc.state, exc.reason, exc.detail)
        except Exception as exc:  # disk full, a port's bug...: the update fails, the agent not
            if ota_errors and isinstance(exc, OtaRejected):
                self.finish_error(UpdateState.REJECTED, exc.reason, exc.message)
            elif ota_errors and isinstance(exc, OtaError):
                self.finish_error(UpdateState.FAILED, exc.reason, exc.message)
            else:
                log.exception(f"{what} failed unexpectedly")
                self.finish_error(
                    UpdateState.FAILED, OtaReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
                )

    def _current(self) -> UpdateRecord:
        if self._record is None:
            raise InternalError("no OTA update in progress")
        return self._record

    def _persist_and_publish(self, rec: UpdateRecord) -> None:
        self.journal.write(rec)
        try:
            self.publisher.publish_state(rec.public_json())
        except Exception:  # a failing publisher must never break an update
            log.exception("publish_state hook failed", extra=log_fields(update=rec.id))
