"""The typed state of one simulated device: the model it serves and its update record."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeviceState", "Serving", "SimCounters", "SimRecord", "engine_hash"]


def engine_hash(device: str, model: str, version: int) -> str:
    """The (made-up, stable) sha256 of the engine a device builds for ``model`` ``version``."""
    return hashlib.sha256(f"{device}/{model}/{version}".encode()).hexdigest()


@dataclass(frozen=True)
class Serving:
    """The model a simulated device serves, and the one it would roll back to."""

    version: int
    fps: float
    previous: Serving | None = None


@dataclass
class SimRecord:
    """The update record published on ``model`` (the fields of docs/telemetry.md)."""

    op: str
    model: str | None
    version: int | None
    state: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    reason: str | None = None
    detail: str = ""
    started_at: int = field(default_factory=lambda: int(time.time()))
    updated_at: int = field(default_factory=lambda: int(time.time()))
    transitions: list[str] = field(default_factory=list[str])
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def __post_init__(self) -> None:
        self.transitions.append(self.state)

    def to(self, state: str, reason: str | None = None, detail: str = "") -> None:
        self.state, self.reason, self.detail = state, reason, detail
        self.updated_at = int(time.time())
        self.transitions.append(state)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "op": self.op,
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "transitions": list(self.transitions),
            **self.extra,
        }


@dataclass
class DeviceState:
    """What a simulated device knows; changed only on the scheduler thread (``online`` and
    ``stopped`` also by the fleet's caller, hence plain flags)."""

    serving: Serving
    record: SimRecord | None = None
    busy: bool = False
    """An update walk is under way (further manifests are dropped, as a full OTA lane)."""
    stopped: bool = False
    online: bool = False
    started: float = field(default_factory=time.monotonic)
    seen: set[str] = field(default_factory=set[str])
    """sha256 of every verified manifest this device processed: a retained manifest
    re-delivered on reconnect is ignored instead of being rejected again."""
    answered: OrderedDict[str, dict[str, Any]] = field(
        default_factory=OrderedDict[str, dict[str, Any]]
    )
    """Responses of the last changing commands by request id (a repeated id is answered
    again, not executed again)."""


@dataclass
class SimCounters:
    """Outcomes of the fleet's updates (thread-safe), for progress lines and tests."""

    counts: dict[str, int] = field(default_factory=dict[str, int])
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
