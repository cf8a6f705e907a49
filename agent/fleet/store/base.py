"""The ports of the fleet controller's state.

Rollouts are stored as JSON documents (``agent.fleet.rollout`` owns their shape; a store only
reads ``fleet``, ``state`` and ``created_at`` from them for its indexed columns) and changed by
one atomic read-modify-write (:meth:`RolloutStore.update`), so the controller's tick thread, the
HTTP API (pause/resume/abort) and other controller instances sharing a PostgreSQL store never
lose a change. The signed per-device manifests of a rollout are stored beside it, one row per
device, written once when the rollout starts. A rollout is driven by one controller instance at a
time: the holder of its lease (:meth:`RolloutStore.claim`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.fleet.history.store import HistoryStore
from agent.fleet.registry.store import RegistryStore

__all__ = ["DocChange", "FleetStore", "RolloutStore"]

DocChange = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""Given the stored document (None: no such rollout), the document to store (None: no change)."""


class RolloutStore(Protocol):
    """Rollout documents by id, their signed manifests, and who drives each one."""

    def create(self, rollout_id: str, doc: dict[str, Any], manifests: Mapping[str, str]) -> None:
        """Store a new rollout and its manifests (device id → signed envelope JSON text) in one
        transaction; :class:`~agent.core.errors.EdgeAgentError` when the id exists."""
        ...

    def update(self, rollout_id: str, change: DocChange) -> dict[str, Any] | None:
        """Apply ``change`` atomically; return the stored document after it (None: unknown)."""
        ...

    def get(self, rollout_id: str) -> dict[str, Any] | None: ...

    def list(self, fleet: str, *, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The rollouts of ``fleet`` (only those in ``states`` when given), newest first."""
        ...

    def manifest(self, rollout_id: str, device: str) -> str | None:
        """The signed envelope (JSON text) made for ``device`` when the rollout started."""
        ...

    def claim(self, rollout_id: str, owner: str, ttl_s: float, now: float) -> bool:
        """Take or renew the lease on driving ``rollout_id`` until ``now + ttl_s``; False while
        another owner holds an unexpired lease."""
        ...


class FleetStore(Protocol):
    """Everything one controller keeps: the registry, the rollouts and the device history, in
    one database."""

    @property
    def registry(self) -> RegistryStore: ...

    @property
    def rollouts(self) -> RolloutStore: ...

    @property
    def history(self) -> HistoryStore: ...

    @property
    def where(self) -> str:
        """A human-readable location (file path, or the PostgreSQL DSN with the password
        hidden) for logs and errors."""
        ...

    def close(self) -> None: ...
