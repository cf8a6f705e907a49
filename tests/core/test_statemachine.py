"""agent.core.statemachine: the table, the lock and the on_change hook."""

from __future__ import annotations

import threading
from enum import Enum

import pytest

from agent.core.errors import InternalError
from agent.core.statemachine import StateMachine, table


class Door(Enum):
    CLOSED = "closed"
    OPEN = "open"
    LOCKED = "locked"
    BROKEN = "broken"
    RETRY = "retry"


TABLE = table(
    {
        Door.CLOSED: (Door.OPEN, Door.LOCKED, Door.BROKEN),
        Door.OPEN: [Door.CLOSED],
        Door.LOCKED: {Door.CLOSED},
        Door.RETRY: (Door.RETRY, Door.CLOSED),  # an explicit self-loop
        # BROKEN is terminal: not in the table
    }
)


def _machine(
    initial: Door = Door.CLOSED,
) -> tuple[StateMachine[Door], list[tuple[Door, Door, str]]]:
    seen: list[tuple[Door, Door, str]] = []
    machine = StateMachine(
        "door", TABLE, initial, on_change=lambda old, new, why: seen.append((old, new, why))
    )
    return machine, seen


def test_table_freezes_rows() -> None:
    assert TABLE[Door.OPEN] == frozenset({Door.CLOSED})
    assert all(isinstance(v, frozenset) for v in TABLE.values())


def test_legal_transitions_return_the_old_state_and_notify() -> None:
    machine, seen = _machine()
    assert machine.state is Door.CLOSED
    assert machine.to(Door.OPEN, "push") is Door.CLOSED
    assert machine.to(Door.CLOSED) is Door.OPEN
    assert machine.to(Door.LOCKED, "night") is Door.CLOSED
    assert machine.state is Door.LOCKED
    assert seen == [
        (Door.CLOSED, Door.OPEN, "push"),
        (Door.OPEN, Door.CLOSED, ""),
        (Door.CLOSED, Door.LOCKED, "night"),
    ]


def test_illegal_transition_is_an_internal_error() -> None:
    machine, seen = _machine(Door.LOCKED)
    with pytest.raises(
        InternalError, match=r"door: illegal transition 'locked' -> 'open' \(kick\)"
    ):
        machine.to(Door.OPEN, "kick")
    assert machine.state is Door.LOCKED and seen == []


def test_terminal_state_allows_nothing() -> None:
    machine, _ = _machine(Door.BROKEN)
    assert not any(machine.allowed(s) for s in Door if s is not Door.BROKEN)
    with pytest.raises(InternalError):
        machine.to(Door.CLOSED)


def test_undeclared_self_transition_is_a_silent_no_op() -> None:
    machine, seen = _machine()
    assert machine.to(Door.CLOSED, "again") is Door.CLOSED
    assert machine.state is Door.CLOSED and seen == []
    broken, seen_broken = _machine(Door.BROKEN)
    assert broken.to(Door.BROKEN) is Door.BROKEN and seen_broken == []


def test_declared_self_loop_notifies() -> None:
    machine, seen = _machine(Door.RETRY)
    assert machine.allowed(Door.RETRY)
    assert machine.to(Door.RETRY, "again") is Door.RETRY
    assert seen == [(Door.RETRY, Door.RETRY, "again")]


def test_allowed() -> None:
    machine, _ = _machine()
    assert machine.allowed(Door.OPEN) and machine.allowed(Door.LOCKED)
    assert not machine.allowed(Door.RETRY) and not machine.allowed(Door.CLOSED)


def test_force_skips_the_table_and_notifies_on_change_only() -> None:
    machine, seen = _machine(Door.LOCKED)
    assert machine.force(Door.OPEN, "restore") is Door.LOCKED
    assert machine.force(Door.OPEN) is Door.OPEN
    assert machine.state is Door.OPEN and seen == [(Door.LOCKED, Door.OPEN, "restore")]


def test_on_change_runs_outside_the_lock() -> None:
    """The hook may read the state and even move the machine again without deadlocking."""
    observed: list[Door] = []

    def on_change(old: Door, new: Door, reason: str) -> None:
        observed.append(machine.state)
        if new is Door.OPEN:
            machine.to(Door.CLOSED, "spring")

    machine = StateMachine("door", TABLE, Door.CLOSED, on_change=on_change)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (machine.to(Door.OPEN, "push"), done.set()))
    worker.start()
    assert done.wait(5.0), "on_change was called while the lock was held"
    worker.join()
    assert observed == [Door.OPEN, Door.CLOSED] and machine.state is Door.CLOSED


def test_no_hook() -> None:
    machine = StateMachine("door", TABLE, Door.CLOSED)
    assert machine.to(Door.OPEN) is Door.CLOSED and machine.force(Door.BROKEN) is Door.OPEN
    assert machine.name == "door"


def test_racing_threads_move_the_machine_once() -> None:
    """Eight threads ask for CLOSED -> OPEN at once: one moves it, the others find it OPEN."""
    machine, seen = _machine()
    start = threading.Barrier(8)
    olds: list[Door] = []

    def go() -> None:
        start.wait()
        olds.append(machine.to(Door.OPEN, "race"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.value for o in olds) == ["closed"] + ["open"] * 7
    assert seen == [(Door.CLOSED, Door.OPEN, "race")]
