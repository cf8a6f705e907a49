"""One inference worker: a thread that owns ONE runner (made in that thread) and a
:class:`WorkerContext`, and a state machine declared in :data:`WORKER_TRANSITIONS`.

A draining worker finishes the batch it holds, takes no new work, releases its runner and
stops. A worker dies (FAILED) when its runner or a stage raised :class:`WorkerFatal`, its
runner could not start, or ``fatal_after`` batches in a row failed; the pool replaces it.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.backends.base import Runner
from agent.core.statemachine import StateMachine, table
from agent.pipeline.frames import Result
from agent.pipeline.pool.batching import PostJob, QueuedFrame
from agent.pipeline.pool.events import WorkerStats
from agent.pipeline.pool.work import Stages, WorkerContext, WorkerFatal

log = logging.getLogger(__name__)


class WorkerState(enum.Enum):
    STARTING = "starting"  # thread up, creating/activating its runner
    IDLE = "idle"  # waiting for frames
    BUSY = "busy"  # serving a batch
    DRAINING = "draining"  # finishing the batch it holds; takes no new work
    STOPPED = "stopped"  # runner released, thread gone (terminal)
    FAILED = "failed"  # died; the pool may start a replacement (terminal)


_W = WorkerState
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = table(
    {
        _W.STARTING: {_W.IDLE, _W.DRAINING, _W.FAILED},
        _W.IDLE: {_W.BUSY, _W.DRAINING, _W.FAILED},
        _W.BUSY: {_W.IDLE, _W.DRAINING, _W.FAILED},
        _W.DRAINING: {_W.STOPPED, _W.FAILED},
        _W.STOPPED: set(),
        _W.FAILED: set(),
    }
)


class WorkerHost(Protocol):
    """What a worker needs from its pool (the pool's lock is taken inside these calls)."""

    runner_factory: Callable[[], Runner]
    stages: Stages
    fatal_after: int

    def worker_ready(self, w: Worker) -> bool: ...

    def take(self, w: Worker) -> list[QueuedFrame] | None: ...

    def batch_done(self, w: Worker) -> None: ...

    def worker_exited(self, w: Worker, crash: BaseException | None) -> None: ...

    def complete_many(self, pairs: Sequence[tuple[QueuedFrame, Result]]) -> None: ...

    def fail_items(
        self, items: Sequence[QueuedFrame], stage: str, error: str, worker: int | None
    ) -> None: ...

    def hand_over(self, job: PostJob) -> list[tuple[QueuedFrame, Result]]: ...


class StageFailed(Exception):
    def __init__(self, stage: str, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.stage = stage


class Worker:
    """One inference thread. Its state moves only through :meth:`transition` (pool lock held)."""

    def __init__(self, pool: WorkerHost, worker_id: int, delay_s: float = 0.0):
        self.id = worker_id
        self._pool = pool
        self.delay_s = delay_s  # restart back-off before the runner is made
        self.wake = threading.Event()  # set when drained: cuts the back-off short
        self._machine = StateMachine(f"worker {worker_id}", WORKER_TRANSITIONS, _W.STARTING)
        self.was_busy_when_drained = False
        self.batch: list[QueuedFrame] = []  # frames in hand, not yet given a result
        self.batches = 0
        self.frames = 0
        self.errors = 0
        self.busy_s = 0.0
        self.t_start = time.monotonic()
        self.t_end: float | None = None
        self._busy_since: float | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"pool-worker-{worker_id}", daemon=True
        )

    @property
    def state(self) -> WorkerState:
        return self._machine.state

    def transition(self, new: WorkerState) -> None:
        """Move along the table (an illegal move raises :class:`InternalError`)."""
        if self._machine.to(new) is new:
            return  # already there: nothing to account
        now = time.monotonic()
        if new is WorkerState.BUSY:
            self._busy_since = now
        elif self._busy_since is not None and new is not WorkerState.DRAINING:
            self.busy_s += now - self._busy_since
            self._busy_since = None
        if new in (WorkerState.STOPPED, WorkerState.FAILED):
            if self._busy_since is not None:
                self.busy_s += now - self._busy_since
                self._busy_since = None
            self.t_end = now

    def stats(self) -> WorkerStats:
        now = time.monotonic()
        busy = self.busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        alive = max(1e-9, (self.t_end or now) - self.t_start)
        return WorkerStats(
            worker_id=self.id,
            state=self.state.value,
            busy_pct=round(100.0 * min(1.0, busy / alive), 2),
            busy_s=round(busy, 4),
            alive_s=round(alive, 4),
            batches=self.batches,
            frames=self.frames,
            mean_batch=round(self.frames / self.batches, 3) if self.batches else 0.0,
            errors=self.errors,
        )

    # -- thread body

    def _run(self) -> None:
        pool = self._pool
        crash: BaseException | None = None
        runner: Runner | None = None
        ctx: WorkerContext | None = None
        try:
            if self.delay_s > 0:
                self.wake.wait(self.delay_s)
            if self.state is WorkerState.DRAINING:
                return
            runner = pool.runner_factory()
            runner.__enter__()
            ctx = WorkerContext(self.id, runner)
            if pool.stages.setup is not None:
                pool.stages.setup(ctx)
            if pool.worker_ready(self):
                failures = 0
                while True:
                    batch = pool.take(self)
                    if batch is None:
                        break
                    ok = self._serve(ctx, batch)
                    failures = 0 if ok else failures + 1
                    pool.batch_done(self)
                    if pool.fatal_after and failures >= pool.fatal_after:
                        raise WorkerFatal(f"{failures} batches in a row failed")
        except BaseException as exc:  # the thread's last stop: report, never propagate
            crash = exc
        finally:
            if ctx is not None:
                if pool.stages.teardown is not None:
                    try:
                        pool.stages.teardown(ctx)
                    except Exception:
                        log.exception("worker %d: teardown failed", self.id)
                ctx.close()
            if runner is not None:
                try:
                    runner.__exit__(None, None, None)
                except Exception:
                    log.exception("worker %d: releasing the runner failed", self.id)
            pool.worker_exited(self, crash)

    def _serve(self, ctx: WorkerContext, batch: list[QueuedFrame]) -> bool:
        """Run the batch; when a stage raises, retry frame by frame so only the frames at fault
        get error results. Returns False when any frame failed. WorkerFatal propagates (the
        frames still in ``self.batch`` then get error results from the pool)."""
        try:
            self._pool.complete_many(self._run_stages(ctx, batch))
            self.batch = []
            return True
        except StageFailed as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return False
            log.debug("worker %d: batch of %d failed (%s); per frame now", self.id, len(batch), exc)
        ok = True
        for item in batch:
            try:
                self._pool.complete_many(self._run_stages(ctx, [item]))
            except StageFailed as exc:
                self._fail(item, exc)
                ok = False
            self.batch = [x for x in self.batch if x is not item]
        return ok

    def _fail(self, item: QueuedFrame, exc: StageFailed) -> None:
        self.errors += 1
        self.batch = [x for x in self.batch if x is not item]
        self._pool.fail_items([item], exc.stage, str(exc), self.id)

    def _run_stages(
        self, ctx: WorkerContext, batch: list[QueuedFrame]
    ) -> list[tuple[QueuedFrame, Result]]:
        """Preprocess and infer; postprocess here, or hand the batch to a postprocess thread
        (then the results are completed there and nothing is returned)."""
        pool = self._pool
        stages = pool.stages
        frames = [it.frame for it in batch]
        t_pick = time.monotonic()
        stage = "preprocess"
        try:
            feeds, letterboxes = stages.preprocess(frames, ctx)
            t_pre = time.monotonic()
            stage = "infer"
            outputs = stages.infer(ctx.runner, feeds)
            t_inf = time.monotonic()
        except WorkerFatal:
            raise
        except Exception as exc:
            raise StageFailed(stage, exc) from exc
        job = PostJob(batch, outputs, letterboxes, t_pick, t_pre, t_inf)
        try:
            return pool.hand_over(job)
        except WorkerFatal:
            raise
        except Exception as exc:
            raise StageFailed("postprocess", exc) from exc
