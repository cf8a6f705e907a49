"""The one state-machine helper: a declared transition table, a lock and an ``on_change`` hook.

Every machine in the agent (daemon lifecycle, camera sources, pool workers, governor, OTA
updater) is one :class:`StateMachine` over its own ``Enum`` with its table written out in one
place. An illegal transition is a bug in the agent, never a user error: it raises
:class:`~agent.core.errors.InternalError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Generic, TypeVar

from agent.core.errors import InternalError

S = TypeVar("S", bound=Enum)

OnChange = Callable[[S, S, str], None]
"""``on_change(old, new, reason)``: called after each transition, outside the lock."""


def table(rows: Mapping[S, Iterable[S]]) -> dict[S, frozenset[S]]:
    """Freeze a ``{state: allowed next states}`` mapping into a transition table."""
    return {state: frozenset(nxt) for state, nxt in rows.items()}


class StateMachine(Generic[S]):
    """A thread-safe state holder that only moves along ``transitions``.

    ``transitions`` maps each state to the states it may move to. A state missing from the table
    is terminal. ``to(state)`` with the current state is a no-op unless ``state -> state`` is
    declared (self-loops are explicit, as in the source machines that re-enter BACKOFF).
    """

    def __init__(
        self,
        name: str,
        transitions: Mapping[S, frozenset[S]],
        initial: S,
        *,
        on_change: OnChange[S] | None = None,
    ) -> None:
        self.name = name
        self._table = transitions
        self._state = initial
        self._on_change = on_change
        self._lock = threading.Lock()

    @property
    def state(self) -> S:
        return self._state

    def allowed(self, new: S) -> bool:
        """Whether ``new`` is reachable from the current state in one step."""
        return new in self._table.get(self._state, frozenset())

    def to(self, new: S, reason: str = "") -> S:
        """Move to ``new`` and return the previous state; ``on_change`` runs after the lock is
        released, so it may read the state or move the machine again.

        Asking for the current state without a declared self-loop changes nothing and calls no
        hook. Raises :class:`InternalError` when the table does not allow the step.
        """
        with self._lock:
            old = self._state
            if new not in self._table.get(old, frozenset()):
                if old == new:
                    return old
                raise InternalError(
                    f"{self.name}: illegal transition {old.value!r} -> {new.value!r}"
                    + (f" ({reason})" if reason else "")
                )
            self._state = new
        if self._on_change is not None:
            self._on_change(old, new, reason)
        return old

    def force(self, new: S, reason: str = "") -> S:
        """Set the state without a table check: only for restoring a persisted state."""
        with self._lock:
            old, self._state = self._state, new
        if self._on_change is not None and old != new:
            self._on_change(old, new, reason)
        return old
