"""The worker pool: N inference workers behind one bounded queue, results in order per source.

Each :class:`Worker` is a thread that owns ONE runner, made by ``runner_factory()`` *inside* that
thread, and a :class:`WorkerContext` where the stages keep what must be per worker (a CUDA
stream, pinned host and device buffers, a GPU preprocessor): two workers never share an
execution context or a buffer. The pool knows nothing of models; it drives three callables
(:class:`Stages`): ``preprocess(frames, ctx) -> (feeds, letterboxes)``,
``infer(runner, feeds) -> outputs`` and ``postprocess(frames, outputs, letterboxes, timings)``.

Flow::

    submit(frame) ─► bounded FIFO ─► idle worker takes 1..max_batch queued frames
                                     (waits at most batch_timeout_ms after the first frame
                                     was queued: a loaded pool batches, an idle one does not)
                  ─► preprocess → infer → postprocess ─► reorder buffer ─► on_result (in order)

Guarantees:

* every accepted frame yields exactly one Result: a real one or an *error result*
  (``raw={"error": ..., "stage": ...}``, see :func:`result_error`); a batch that raises is
  retried frame by frame, so only the frame at fault gets the error;
* results of one source are delivered in submission order. The reorder buffer is keyed by
  (source, submission sequence), not by ``Frame.index``: index gaps are frames a source already
  dropped (never submitted, so never waited for), and a source that restarts its count cannot
  collide with itself. A head-of-line frame whose result has not come ``gap_timeout_s`` after a
  later frame of its source finished is skipped (``FRAME_SKIPPED`` event; its late result is
  dropped): a stuck frame never stalls its source forever;
* ``on_result`` is called from one delivery thread, one result at a time; an exception there is
  logged and does not stop delivery. ``on_event`` is called from pool threads and must only
  validate and enqueue.

Resizing (the governor asks): growing starts workers; shrinking marks workers DRAINING (idle
ones first): a draining worker finishes the batch it holds, takes no new work, releases its
runner and stops. A worker that dies (its runner or a stage raised :class:`WorkerFatal`, its
runner could not start, or ``fatal_after`` batches in a row failed) is replaced within a restart
budget (``restarts`` per ``restart_window_s``); when the budget is spent the pool says so with a
``RESTART_BUDGET_EXHAUSTED`` event, and with no live worker left it fails the queued frames and
refuses new ones until :meth:`WorkerPool.resize` is called again.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.backends.base import Runner
from agent.core.restarts import RestartBudget
from agent.pipeline.frames import Frame, Result

__all__ = [
    "InvalidTransition",
    "PoolEvent",
    "PoolEventKind",
    "PoolStats",
    "Stages",
    "Worker",
    "WorkerContext",
    "WorkerFatal",
    "WorkerPool",
    "WorkerState",
    "WorkerStats",
    "error_result",
    "result_error",
]

log = logging.getLogger(__name__)

#: runner inputs: host arrays, or whatever a custom ``infer`` stage understands (device buffers)
Feeds = Mapping[str, Any]
Outputs = dict[str, np.ndarray]


# --------------------------------------------------------------------------- state machine


class WorkerState(enum.Enum):
    STARTING = "starting"  # thread up, creating/activating its runner
    IDLE = "idle"  # waiting for frames
    BUSY = "busy"  # serving a batch
    DRAINING = "draining"  # finishing the batch it holds; takes no new work
    STOPPED = "stopped"  # runner released, thread gone (terminal)
    FAILED = "failed"  # died; the pool may start a replacement (terminal)


_ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.DRAINING, WorkerState.FAILED}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.DRAINING, WorkerState.FAILED}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.DRAINING, WorkerState.FAILED}),
    WorkerState.DRAINING: frozenset({WorkerState.STOPPED, WorkerState.FAILED}),
    WorkerState.STOPPED: frozenset(),
    WorkerState.FAILED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A worker was asked to move between states its state machine does not connect."""


class WorkerFatal(Exception):
    """Raised by a runner or a stage when the worker's context is unusable (a sticky CUDA error,
    a lost device): the worker dies, its frames get error results and the pool restarts it."""


# --------------------------------------------------------------------------- records


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


def _default_infer(runner: Runner, feeds: Feeds) -> Outputs:
    return runner.infer(feeds)


@dataclass
class WorkerContext:
    """What one worker owns. Stages keep per-worker objects (CUDA stream, pinned/device buffers,
    preprocessor) in ``resources``; on stop every resource with a ``close()`` is closed, in
    reverse order of insertion, after the stages' ``teardown``."""

    worker_id: int
    runner: Runner
    resources: dict[str, Any] = field(default_factory=dict[str, Any])

    def close(self) -> None:
        for name, res in reversed(list(self.resources.items())):
            closer = getattr(res, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:
                    log.exception("worker %d: closing resource %r failed", self.worker_id, name)
        self.resources.clear()


@dataclass(frozen=True)
class Stages:
    """The work a worker does on a batch.

    ``timings`` given to ``postprocess`` holds the batch's ``preprocess`` and ``infer`` times in
    ms; the pool then sets ``queue``, ``postprocess`` and ``total`` per frame on each Result.
    ``setup(ctx)`` runs in the worker thread after its runner is active (make the stream and
    buffers there); ``teardown(ctx)`` before the runner is released. ``model``/``task`` label
    error results.
    """

    preprocess: Callable[[Sequence[Frame], WorkerContext], tuple[Feeds, Sequence[Any]]]
    postprocess: Callable[
        [Sequence[Frame], Outputs, Sequence[Any], Mapping[str, float]], Sequence[Result]
    ]
    infer: Callable[[Runner, Feeds], Outputs] = _default_infer
    setup: Callable[[WorkerContext], None] | None = None
    teardown: Callable[[WorkerContext], None] | None = None
    model: str = ""
    task: str = ""


def error_result(
    frame: Frame, stage: str, error: str, *, model: str = "", task: str = ""
) -> Result:
    """The Result standing for a frame that could not be served."""
    return Result(
        source=frame.source,
        index=frame.index,
        wall_time=frame.wall_time,
        model=model,
        task=task,
        raw={"error": error, "stage": stage},
        timings_ms={"total": max(0.0, (time.monotonic() - frame.t_capture) * 1000.0)},
    )


def result_error(result: Result) -> str | None:
    """The error message of an error result, None for a served frame."""
    raw = result.raw
    if raw is not None and isinstance(raw.get("error"), str):
        return str(raw["error"])
    return None


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


@dataclass(frozen=True)
class _Item:
    frame: Frame
    key: tuple[str, int]
    t_submit: float


# --------------------------------------------------------------------------- worker


class Worker:
    """One inference thread. Its state moves only through :meth:`transition` (pool lock held)."""

    def __init__(self, pool: WorkerPool, worker_id: int, delay_s: float = 0.0):
        self.id = worker_id
        self._pool = pool
        self.delay_s = delay_s  # restart back-off before the runner is made
        self.wake = threading.Event()  # set when drained: cuts the back-off short
        self.state = WorkerState.STARTING
        self.was_busy_when_drained = False
        self.batch: list[_Item] = []  # frames in hand, not yet given a result
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

    def transition(self, new: WorkerState) -> None:
        if new not in _ALLOWED[self.state]:
            raise InvalidTransition(
                f"worker {self.id}: {self.state.value} → {new.value} is not allowed"
            )
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
        self.state = new

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
            if pool._worker_ready(self):
                failures = 0
                while True:
                    batch = pool._take(self)
                    if batch is None:
                        break
                    ok = self._serve(ctx, batch)
                    failures = 0 if ok else failures + 1
                    pool._batch_done(self)
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
            pool._worker_exited(self, crash)

    def _serve(self, ctx: WorkerContext, batch: list[_Item]) -> bool:
        """Run the batch; when a stage raises, retry frame by frame so only the frames at fault
        get error results. Returns False when any frame failed. WorkerFatal propagates (the
        frames still in ``self.batch`` then get error results from the pool)."""
        try:
            self._pool._complete_many(self._run_stages(ctx, batch))
            self.batch = []
            return True
        except _StageFailed as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return False
            log.debug("worker %d: batch of %d failed (%s); per frame now", self.id, len(batch), exc)
        ok = True
        for item in batch:
            try:
                self._pool._complete_many(self._run_stages(ctx, [item]))
            except _StageFailed as exc:
                self._fail(item, exc)
                ok = False
            self.batch = [x for x in self.batch if x is not item]
        return ok

    def _fail(self, item: _Item, exc: _StageFailed) -> None:
        self.errors += 1
        self.batch = [x for x in self.batch if x is not item]
        self._pool._fail_items([item], exc.stage, str(exc), self.id)

    def _run_stages(self, ctx: WorkerContext, batch: list[_Item]) -> list[tuple[_Item, Result]]:
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
            raise _StageFailed(stage, exc) from exc
        job = _PostJob(batch, outputs, letterboxes, t_pick, t_pre, t_inf)
        if pool.post_threads:
            pool._post_put(job)
            return []
        try:
            return pool._postprocess(job)
        except WorkerFatal:
            raise
        except Exception as exc:
            raise _StageFailed("postprocess", exc) from exc


@dataclass(frozen=True)
class _PostJob:
    """A batch that went through inference, waiting for postprocess."""

    batch: list[_Item]
    outputs: Outputs
    letterboxes: Sequence[Any]
    t_pick: float
    t_pre: float
    t_inf: float


class _StageFailed(Exception):
    def __init__(self, stage: str, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.stage = stage


# --------------------------------------------------------------------------- pool


class WorkerPool:
    """N workers, one bounded input queue, dynamic batching and in-order delivery per source.

    Args:
        runner_factory: makes one (inactive) runner; called in each worker's own thread.
        stages: the batch work (:class:`Stages`).
        size: initial number of workers (``RuntimeLimits.streams``, the governor may resize).
        max_batch: largest batch a worker takes (the profile's opt batch).
        batch_timeout_ms: how long after the first queued frame a worker may wait for more
            frames to fill its batch; 0 takes only what is already queued.
        on_result: receives every Result, in order per source, from the delivery thread.
        on_event: receives :class:`PoolEvent` from pool threads; it must only enqueue.
        queue_capacity: bounded input queue (default ``2 × size × max_batch``, at least 4).
        gap_timeout_s: longest a source's head-of-line frame may block later results.
        restarts, restart_window_s: restart budget for dead workers.
        restart_delay_s: a replacement waits this long before making its runner (lets a
            transient cause, such as memory pressure, pass).
        fatal_after: consecutive failed batches after which a worker is deemed broken and
            restarted (0: never).
        post_threads: 0 runs postprocess in the worker; N > 0 hands each inferred batch to N
            postprocess threads (a queue of ``2 × size`` batches, back-pressure beyond), so a
            worker goes straight on to its next inference while the last batch is decoded.
    """

    def __init__(
        self,
        runner_factory: Callable[[], Runner],
        stages: Stages,
        size: int,
        max_batch: int,
        batch_timeout_ms: float = 2.0,
        *,
        on_result: Callable[[Result], None],
        on_event: Callable[[PoolEvent], None] | None = None,
        queue_capacity: int | None = None,
        gap_timeout_s: float = 2.0,
        restarts: int = 5,
        restart_window_s: float = 60.0,
        fatal_after: int = 8,
        restart_delay_s: float = 0.5,
        post_threads: int = 0,
    ):
        if size < 1:
            raise ValueError("pool size must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.runner_factory = runner_factory
        self.stages = stages
        self.max_batch = int(max_batch)
        self.batch_timeout_s = max(0.0, float(batch_timeout_ms) / 1000.0)
        self.gap_timeout_s = float(gap_timeout_s)
        self.fatal_after = int(fatal_after)
        self.restart_delay_s = max(0.0, float(restart_delay_s))
        self._on_result = on_result
        self._on_event = on_event
        self.queue_capacity = int(queue_capacity or max(4, 2 * size * max_batch))

        self._cond = threading.Condition()  # queue, workers, counters
        self._queue: deque[_Item] = deque()
        self._workers: list[Worker] = []
        self._next_id = 0
        self._target = int(size)
        self._closing = False
        self._failed = False
        self._budget = RestartBudget(max(0, restarts), restart_window_s)
        self._budget_spent = False
        self._restarts = 0
        self._submitted = 0
        self._rejected = 0
        self._batches = 0
        self._batched_frames = 0

        # reorder buffer (its own lock: workers complete without touching the queue lock)
        self._rcond = threading.Condition()
        self._seq: dict[str, int] = {}
        self._pending: dict[str, deque[int]] = {}
        self._ready: dict[tuple[str, int], Result] = {}
        self._ready_count: dict[str, int] = {}
        self._blocked_since: dict[str, float] = {}
        self._skipped: set[tuple[str, int]] = set()
        self._delivering = 0  # results taken out of the buffer, on_result not yet returned
        self._final = False
        self._results = 0
        self._errors = 0
        self._skips = 0

        # postprocess threads (their own lock: a worker hands over without the queue lock)
        self.post_threads = max(0, int(post_threads))
        self._pcond = threading.Condition()
        self._post_queue: deque[_PostJob] = deque()
        self._post_closing = False
        self._posters = [
            threading.Thread(target=self._post_loop, name=f"pool-post-{i}", daemon=True)
            for i in range(self.post_threads)
        ]
        for t in self._posters:
            t.start()

        self._delivery = threading.Thread(
            target=self._deliver_loop, name="pool-delivery", daemon=True
        )
        self._delivery.start()
        with self._cond:
            for _ in range(self._target):
                self._start_worker()

    # ----------------------------------------------------------------- public API

    @property
    def size(self) -> int:
        """The target number of serving workers."""
        with self._cond:
            return self._target

    @property
    def live_workers(self) -> int:
        """Worker threads alive, draining ones included (== size once a resize converged)."""
        with self._cond:
            return len(self._workers)

    @property
    def failed(self) -> bool:
        with self._cond:
            return self._failed

    def submit(self, frame: Frame) -> bool:
        """Queue a frame; False when the queue is full, the pool is stopping or has failed (the
        caller applies its drop policy)."""
        with self._cond:
            if self._closing or self._failed or len(self._queue) >= self.queue_capacity:
                self._rejected += 1
                return False
            with self._rcond:
                seq = self._seq.get(frame.source, 0)
                self._seq[frame.source] = seq + 1
                self._pending.setdefault(frame.source, deque()).append(seq)
            self._queue.append(_Item(frame, (frame.source, seq), time.monotonic()))
            self._submitted += 1
            # notify_all: the waiters include stop()/wait_converged(), which must not swallow
            # the wake-up a worker needs
            self._cond.notify_all()
            return True

    def resize(self, n: int) -> None:
        """Grow by starting workers, shrink by draining (idle workers first)."""
        if n < 1:
            raise ValueError("pool size must be at least 1")
        events: list[PoolEvent] = []
        with self._cond:
            if self._closing:
                return
            old = self._target
            self._target = int(n)
            self._failed = False
            self._budget_spent = False
            serving = [w for w in self._workers if w.state not in (WorkerState.DRAINING,)]
            if len(serving) < n:
                for _ in range(n - len(serving)):
                    self._start_worker()
            elif len(serving) > n:
                order = {WorkerState.STARTING: 0, WorkerState.IDLE: 1, WorkerState.BUSY: 2}
                victims = sorted(serving, key=lambda w: (order.get(w.state, 3), -w.id))
                for w in victims[: len(serving) - n]:
                    events.append(self._drain(w))
            self._cond.notify_all()
            events.append(
                PoolEvent(
                    PoolEventKind.RESIZED, f"pool size {old} → {n}", data={"old": old, "new": n}
                )
            )
        for ev in events:
            self._emit(ev)

    @property
    def full(self) -> bool:
        """The input queue is at capacity (a submit now would be refused)."""
        with self._cond:
            return len(self._queue) >= self.queue_capacity

    @property
    def backlog(self) -> int:
        """Frames queued and not yet taken by a worker."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> PoolStats:
        with self._cond:
            workers = tuple(w.stats() for w in self._workers)
            serving = sum(1 for w in self._workers if w.state is not WorkerState.DRAINING)
            live = len(self._workers)
            depth = len(self._queue)
            submitted, rejected, batches = self._submitted, self._rejected, self._batches
            mean = round(self._batched_frames / batches, 3) if batches else 0.0
            restarts, spent, failed = self._restarts, self._budget_spent, self._failed
        with self._rcond:
            results, errors, skipped = self._results, self._errors, self._skips
        return PoolStats(
            size=serving,
            live=live,
            max_batch=self.max_batch,
            queue_depth=depth,
            queue_capacity=self.queue_capacity,
            submitted=submitted,
            rejected=rejected,
            results=results,
            errors=errors,
            skipped=skipped,
            batches=batches,
            mean_batch=mean,
            restarts=restarts,
            restart_budget_spent=spent,
            failed=failed,
            workers=workers,
        )

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every accepted frame has been delivered (or skipped)."""
        deadline = time.monotonic() + timeout
        with self._rcond:
            while any(self._pending.values()) or self._delivering:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._rcond.wait(min(remaining, 0.05))
        return True

    def wait_converged(self, timeout: float) -> bool:
        """Wait until the live workers equal the target size and none is starting/draining."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (
                len(self._workers) == self._target
                and all(w.state in (WorkerState.IDLE, WorkerState.BUSY) for w in self._workers)
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop taking frames, let the workers drain the queue until ``timeout``, fail what is
        still queued then, stop the workers and flush delivery. Returns True when everything
        stopped within the time; a worker stuck in its runner is abandoned (daemon thread)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closing = True
            while (self._queue and self._workers) or any(
                w.state is WorkerState.BUSY for w in self._workers
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            leftover = list(self._queue)
            self._queue.clear()
            for w in list(self._workers):
                if w.state not in (WorkerState.DRAINING, WorkerState.STOPPED, WorkerState.FAILED):
                    w.transition(WorkerState.DRAINING)
                    w.wake.set()
            self._cond.notify_all()
            threads = [w.thread for w in self._workers]
        self._fail_items(leftover, "queue", "dropped: the pool stopped", None)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._pcond:  # postprocess what the workers handed over, then stop
            self._post_closing = True
            self._pcond.notify_all()
        for t in self._posters:
            t.join(max(0.05, deadline - time.monotonic()))
        clean = not any(t.is_alive() for t in [*threads, *self._posters])
        with self._rcond:
            self._final = True
            self._rcond.notify_all()
        self._delivery.join(max(0.05, deadline - time.monotonic()))
        clean = clean and not self._delivery.is_alive()
        self._emit(PoolEvent(PoolEventKind.STOPPED, "pool stopped", data={"clean": clean}))
        return clean

    # ----------------------------------------------------------------- workers (lock held)

    def _start_worker(self, delay_s: float = 0.0) -> Worker:
        w = Worker(self, self._next_id, delay_s)
        self._next_id += 1
        self._workers.append(w)
        w.thread.start()
        return w

    def _drain(self, w: Worker) -> PoolEvent:
        w.was_busy_when_drained = w.state is WorkerState.BUSY
        w.transition(WorkerState.DRAINING)
        w.wake.set()
        return PoolEvent(
            PoolEventKind.WORKER_DRAINING,
            f"worker {w.id} draining",
            worker=w.id,
            data={"was_busy": w.was_busy_when_drained, "in_hand": len(w.batch)},
        )

    def _worker_ready(self, w: Worker) -> bool:
        with self._cond:
            if w.state is WorkerState.DRAINING:
                return False
            w.transition(WorkerState.IDLE)
            self._cond.notify_all()
        self._emit(PoolEvent(PoolEventKind.WORKER_STARTED, f"worker {w.id} serving", worker=w.id))
        return True

    def _take(self, w: Worker) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if w.state is WorkerState.DRAINING:
                    return None
                self._cond.wait()
            if w.state is WorkerState.DRAINING:
                return None
            first = self._queue.popleft()
            batch = [first]
            w.batch = batch
            deadline = first.t_submit + self.batch_timeout_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or w.state is WorkerState.DRAINING or self._closing:
                    break
                self._cond.wait(remaining)
            if w.state is WorkerState.IDLE:
                w.transition(WorkerState.BUSY)
            self._batches += 1
            self._batched_frames += len(batch)
            w.batches += 1
            w.frames += len(batch)
            if self._queue:
                self._cond.notify_all()
            return batch

    def _batch_done(self, w: Worker) -> None:
        with self._cond:
            w.batch = []
            if w.state is WorkerState.BUSY:
                w.transition(WorkerState.IDLE)
            self._cond.notify_all()

    def _worker_exited(self, w: Worker, crash: BaseException | None) -> None:
        events: list[PoolEvent] = []
        with self._cond:
            in_hand = list(w.batch)
            w.batch = []
            if w in self._workers:
                self._workers.remove(w)
            if crash is None and w.state is WorkerState.DRAINING:
                w.transition(WorkerState.STOPPED)
                events.append(
                    PoolEvent(PoolEventKind.WORKER_STOPPED, f"worker {w.id} stopped", worker=w.id)
                )
            else:
                if w.state not in (WorkerState.STOPPED, WorkerState.FAILED):
                    w.transition(WorkerState.FAILED)
                why = f"{type(crash).__name__}: {crash}" if crash is not None else "exited"
                log.error("worker %d failed: %s", w.id, why)
                events.append(
                    PoolEvent(
                        PoolEventKind.WORKER_FAILED, f"worker {w.id} failed: {why}", worker=w.id
                    )
                )
                serving = sum(1 for x in self._workers if x.state is not WorkerState.DRAINING)
                if not self._closing and serving < self._target:
                    if self._budget.try_spend(time.monotonic()):
                        self._restarts += 1
                        new = self._start_worker(self.restart_delay_s)
                        events.append(
                            PoolEvent(
                                PoolEventKind.WORKER_RESTARTED,
                                f"worker {w.id} replaced by worker {new.id}",
                                worker=new.id,
                                data={"replaces": w.id},
                            )
                        )
                    else:
                        self._budget_spent = True
                        events.append(
                            PoolEvent(
                                PoolEventKind.RESTART_BUDGET_EXHAUSTED,
                                f"restart budget spent ({self._budget.count} per "
                                f"{self._budget.window_s:g} s); running {serving} of "
                                f"{self._target} workers",
                                data={"serving": serving, "target": self._target},
                            )
                        )
                if not self._workers and not self._closing:
                    self._failed = True
                    leftover = list(self._queue)
                    self._queue.clear()
                    in_hand.extend(leftover)
            self._cond.notify_all()
        if in_hand:
            why = f"worker {w.id} died" + (f": {type(crash).__name__}: {crash}" if crash else "")
            self._fail_items(in_hand, "worker", why, w.id)
        for ev in events:
            self._emit(ev)

    # ----------------------------------------------------------------- postprocess

    def _post_put(self, job: _PostJob) -> None:
        """Hand a batch to the postprocess threads; waits while ``2 × size`` batches queue."""
        with self._pcond:
            while len(self._post_queue) >= 2 * max(1, self._target) and not self._post_closing:
                self._pcond.wait(0.1)
            self._post_queue.append(job)
            self._pcond.notify_all()

    def _post_loop(self) -> None:
        while True:
            with self._pcond:
                while not self._post_queue:
                    if self._post_closing:
                        return
                    self._pcond.wait(0.5)
                job = self._post_queue.popleft()
                self._pcond.notify_all()
            try:
                self._complete_many(self._postprocess(job))
            except Exception as exc:
                self._post_per_frame(job, exc)

    def _post_per_frame(self, job: _PostJob, exc: Exception) -> None:
        """A batch failed postprocess: retry frame by frame where the outputs are batch-major,
        so only the frame at fault gets an error result."""
        n = len(job.batch)
        rows = all(getattr(v, "ndim", 0) >= 1 and v.shape[0] >= n for v in job.outputs.values())
        if n == 1 or not rows:
            self._fail_items(job.batch, "postprocess", f"{type(exc).__name__}: {exc}", None)
            return
        for i, item in enumerate(job.batch):
            single = dataclasses.replace(
                job,
                batch=[item],
                outputs={k: v[i : i + 1] for k, v in job.outputs.items()},
                letterboxes=[job.letterboxes[i]],
            )
            try:
                self._complete_many(self._postprocess(single))
            except Exception as err:
                self._fail_items([item], "postprocess", f"{type(err).__name__}: {err}", None)

    def _postprocess(self, job: _PostJob) -> list[tuple[_Item, Result]]:
        """Postprocess one batch and stamp the per-frame stage timings."""
        frames = [it.frame for it in job.batch]
        timings = {
            "preprocess": (job.t_pre - job.t_pick) * 1000.0,
            "infer": (job.t_inf - job.t_pre) * 1000.0,
        }
        t_post0 = time.monotonic()
        results = list(self.stages.postprocess(frames, job.outputs, job.letterboxes, timings))
        if len(results) != len(frames):
            raise RuntimeError(
                f"postprocess returned {len(results)} results for {len(frames)} frames"
            )
        t_post = time.monotonic()
        out: list[tuple[_Item, Result]] = []
        for item, result in zip(job.batch, results, strict=True):
            timings_ms = dict(result.timings_ms)
            timings_ms.setdefault("preprocess", timings["preprocess"])
            timings_ms.setdefault("infer", timings["infer"])
            timings_ms["queue"] = max(0.0, (job.t_pick - item.frame.t_capture) * 1000.0)
            timings_ms["postprocess"] = (t_post - t_post0) * 1000.0
            timings_ms["total"] = max(0.0, (t_post - item.frame.t_capture) * 1000.0)
            out.append((item, dataclasses.replace(result, timings_ms=timings_ms)))
        return out

    # ----------------------------------------------------------------- results

    def _fail_items(
        self, items: Sequence[_Item], stage: str, error: str, worker: int | None
    ) -> None:
        if not items:
            return
        s = self.stages
        pairs = [
            (it, error_result(it.frame, stage, error, model=s.model, task=s.task)) for it in items
        ]
        self._complete_many(pairs)
        for it in items:
            self._emit(
                PoolEvent(
                    PoolEventKind.FRAME_ERROR,
                    f"{stage}: {error}",
                    worker=worker,
                    source=it.frame.source,
                    index=it.frame.index,
                )
            )

    def _complete_many(self, pairs: Sequence[tuple[_Item, Result]]) -> None:
        late: list[_Item] = []
        with self._rcond:
            for item, result in pairs:
                if item.key in self._skipped:
                    self._skipped.discard(item.key)
                    late.append(item)
                    continue
                self._ready[item.key] = result
                src = item.key[0]
                self._ready_count[src] = self._ready_count.get(src, 0) + 1
            self._rcond.notify_all()
        for item in late:
            self._emit(
                PoolEvent(
                    PoolEventKind.LATE_RESULT_DROPPED,
                    "result came after its slot was skipped; dropped to keep order",
                    source=item.frame.source,
                    index=item.frame.index,
                )
            )

    def _collect(self, now: float) -> tuple[list[Result], list[PoolEvent], float | None]:
        """Pop deliverable results in order (rcond held). Returns results, skip events and the
        next gap deadline."""
        out: list[Result] = []
        events: list[PoolEvent] = []
        next_deadline: float | None = None
        for src in list(self._pending):
            pending = self._pending[src]
            while pending:
                key = (src, pending[0])
                result = self._ready.pop(key, None)
                if result is not None:
                    pending.popleft()
                    self._ready_count[src] -= 1
                    self._blocked_since.pop(src, None)
                    out.append(result)
                    continue
                blocked = self._ready_count.get(src, 0) > 0 or self._final
                if not blocked:
                    self._blocked_since.pop(src, None)
                    break
                since = self._blocked_since.setdefault(src, now)
                if self._final or now - since >= self.gap_timeout_s:
                    pending.popleft()
                    self._skipped.add(key)
                    self._skips += 1
                    self._blocked_since.pop(src, None)
                    events.append(
                        PoolEvent(
                            PoolEventKind.FRAME_SKIPPED,
                            f"no result after {self.gap_timeout_s:g} s; later frames go on",
                            source=src,
                            data={"seq": key[1]},
                        )
                    )
                    continue
                deadline = since + self.gap_timeout_s
                next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
                break
            if not pending:
                del self._pending[src]
                self._ready_count.pop(src, None)
        self._delivering += len(out)
        self._results += len(out)
        self._errors += sum(1 for r in out if result_error(r) is not None)
        return out, events, next_deadline

    def _deliver_loop(self) -> None:
        while True:
            with self._rcond:
                out, events, deadline = self._collect(time.monotonic())
                if not out and not events:
                    if self._final and not self._pending:
                        return
                    wait = 0.5 if deadline is None else max(0.001, deadline - time.monotonic())
                    self._rcond.wait(min(wait, 0.5))
                    continue
            for ev in events:
                self._emit(ev)
            for result in out:
                try:
                    self._on_result(result)
                except Exception:
                    log.exception("on_result raised for %s#%d", result.source, result.index)
            with self._rcond:
                self._delivering -= len(out)
                self._rcond.notify_all()

    def _emit(self, event: PoolEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("on_event raised for %s", event.kind.value)
