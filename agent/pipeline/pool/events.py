"""What the pool reports: :class:`PoolEvent` (from pool threads, to be enqueued by the
receiver) and the typed :class:`WorkerStats` / :class:`PoolStats` snapshots."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class PoolEventKind(str, enum.Enum):
    WORKER_STARTED = "worker_started"
    WORKER_DRAINING = "worker_draining"
    WORKER_STOPPED = "worker_stopped"
    WORKER_FAILED = "worker_failed"
    WORKER_RESTARTED = "worker_restarted"
    RESTART_BUDGET_EXHAUSTED = "restart_budget_exhausted"
    FRAME_ERROR = "frame_error"
    FRAME_SKIPPED = "frame_skipped"
    LATE_RESULT_DROPPED = "late_result_dropped"
    RESIZED = "resized"
    STOPPED = "pool_stopped"


@dataclass(frozen=True)
class PoolEvent:
    kind: PoolEventKind
    message: str
    worker: int | None = None
    source: str | None = None
    index: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict[str, Any])
    wall_time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "message": self.message}
        for key in ("worker", "source", "index"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.data)
        out["wall_time"] = self.wall_time
        return out


@dataclass(frozen=True)
class WorkerStats:
    worker_id: int
    state: str
    busy_pct: float
    busy_s: float
    alive_s: float
    batches: int
    frames: int
    mean_batch: float
    errors: int


@dataclass(frozen=True)
class PoolStats:
    size: int  # target: live workers that are not draining, once converged
    live: int  # threads alive (draining ones included)
    max_batch: int
    queue_depth: int
    queue_capacity: int
    submitted: int
    rejected: int
    results: int
    errors: int
    skipped: int
    batches: int
    mean_batch: float
    restarts: int
    restart_budget_spent: bool
    failed: bool
    workers: tuple[WorkerStats, ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
