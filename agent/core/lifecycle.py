"""What the daemon supervises: the :class:`Component` protocol and its :class:`Health`.

Anything with ``name``, ``start``, ``stop``, ``health`` and ``snapshot`` is a component: the
daemon starts it, restarts it when its health reports a failure (within the restart budget),
watches its activities for progress (the systemd watchdog) and stops it. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Activity:
    """One thing a component is doing. ``busy``: it has work it should be making progress on;
    ``progress``: a counter that advances while it does."""

    key: str
    busy: bool
    progress: int


@dataclass(frozen=True)
class Health:
    """A component's health. ``failure`` (a reason) means it died and needs a restart."""

    failure: str | None = None
    activities: tuple[Activity, ...] = ()


@runtime_checkable
class Component(Protocol):
    """Something the daemon starts, supervises, watches and stops."""

    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def health(self) -> Health: ...

    def snapshot(self) -> dict[str, Any]: ...
