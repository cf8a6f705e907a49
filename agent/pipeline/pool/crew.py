"""The pool's workers: which run, its target size, and the restart budget for dead ones.

Growing starts workers; shrinking drains them (idle ones first). A worker that died is
replaced within the budget (``restarts`` per ``restart_window_s``); once it is spent the crew
says so with a ``RESTART_BUDGET_EXHAUSTED`` event. Every method runs with the pool's lock held.
"""

from __future__ import annotations

import logging
import threading
import time

from agent.core.restarts import RestartBudget
from agent.pipeline.pool.events import PoolEvent, PoolEventKind, WorkerStats
from agent.pipeline.pool.worker import Worker, WorkerHost, WorkerState

log = logging.getLogger(__name__)

#: which serving workers a shrink drains first
_DRAIN_ORDER = {WorkerState.STARTING: 0, WorkerState.IDLE: 1, WorkerState.BUSY: 2}


class WorkerCrew:
    def __init__(
        self,
        host: WorkerHost,
        size: int,
        *,
        restarts: int,
        restart_window_s: float,
        restart_delay_s: float,
    ) -> None:
        self._host = host
        self.workers: list[Worker] = []
        self.target = int(size)
        self._next_id = 0
        self.budget = RestartBudget(max(0, restarts), restart_window_s)
        self.budget_spent = False
        self.restarts = 0
        self.restart_delay_s = max(0.0, float(restart_delay_s))

    def serving(self) -> list[Worker]:
        """Live workers that are not draining."""
        return [w for w in self.workers if w.state is not WorkerState.DRAINING]

    def converged(self) -> bool:
        """The live workers equal the target and none is starting or draining."""
        return len(self.workers) == self.target and all(
            w.state in (WorkerState.IDLE, WorkerState.BUSY) for w in self.workers
        )

    def stats(self) -> tuple[WorkerStats, ...]:
        return tuple(w.stats() for w in self.workers)

    def start(self, delay_s: float = 0.0) -> Worker:
        w = Worker(self._host, self._next_id, delay_s)
        self._next_id += 1
        self.workers.append(w)
        w.thread.start()
        return w

    def drain(self, w: Worker) -> PoolEvent:
        w.was_busy_when_drained = w.state is WorkerState.BUSY
        w.transition(WorkerState.DRAINING)
        w.wake.set()
        return PoolEvent(
            PoolEventKind.WORKER_DRAINING,
            f"worker {w.id} draining",
            worker=w.id,
            data={"was_busy": w.was_busy_when_drained, "in_hand": len(w.batch)},
        )

    def resize(self, n: int) -> list[PoolEvent]:
        """Set the target to ``n``: start workers, or drain the surplus (idle ones first)."""
        self.target = int(n)
        self.budget_spent = False
        serving = self.serving()
        events: list[PoolEvent] = []
        if len(serving) < n:
            for _ in range(n - len(serving)):
                self.start()
        elif len(serving) > n:
            victims = sorted(serving, key=lambda w: (_DRAIN_ORDER.get(w.state, 3), -w.id))
            events = [self.drain(w) for w in victims[: len(serving) - n]]
        return events

    def stop_all(self) -> list[threading.Thread]:
        """Drain every worker still running; their threads, to join."""
        for w in list(self.workers):
            if w.state not in (WorkerState.DRAINING, WorkerState.STOPPED, WorkerState.FAILED):
                w.transition(WorkerState.DRAINING)
                w.wake.set()
        return [w.thread for w in self.workers]

    def retire(self, w: Worker, crash: BaseException | None, *, replace: bool) -> list[PoolEvent]:
        """``w``'s thread ended: STOPPED when it drained cleanly, else FAILED and (when
        ``replace``) restarted within the budget."""
        if w in self.workers:
            self.workers.remove(w)
        if crash is None and w.state is WorkerState.DRAINING:
            w.transition(WorkerState.STOPPED)
            return [PoolEvent(PoolEventKind.WORKER_STOPPED, f"worker {w.id} stopped", worker=w.id)]
        if w.state not in (WorkerState.STOPPED, WorkerState.FAILED):
            w.transition(WorkerState.FAILED)
        why = f"{type(crash).__name__}: {crash}" if crash is not None else "exited"
        log.error("worker %d failed: %s", w.id, why)
        events = [
            PoolEvent(PoolEventKind.WORKER_FAILED, f"worker {w.id} failed: {why}", worker=w.id)
        ]
        serving = len(self.serving())
        if replace and serving < self.target:
            events.append(self._replace(w, serving))
        return events

    def _replace(self, w: Worker, serving: int) -> PoolEvent:
        if self.budget.try_spend(time.monotonic()):
            self.restarts += 1
            new = self.start(self.restart_delay_s)
            return PoolEvent(
                PoolEventKind.WORKER_RESTARTED,
                f"worker {w.id} replaced by worker {new.id}",
                worker=new.id,
                data={"replaces": w.id},
            )
        self.budget_spent = True
        return PoolEvent(
            PoolEventKind.RESTART_BUDGET_EXHAUSTED,
            f"restart budget spent ({self.budget.count} per {self.budget.window_s:g} s); "
            f"running {serving} of {self.target} workers",
            data={"serving": serving, "target": self.target},
        )
