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

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from agent.backends.base import Runner
from agent.pipeline.frames import Frame, Result
from agent.pipeline.pool.batching import PostJob, QueuedFrame, fill_batch
from agent.pipeline.pool.crew import WorkerCrew
from agent.pipeline.pool.events import PoolEvent, PoolEventKind, PoolStats
from agent.pipeline.pool.posting import PostprocessThreads
from agent.pipeline.pool.reorder import ReorderBuffer
from agent.pipeline.pool.work import Stages, error_result
from agent.pipeline.pool.worker import Worker, WorkerState

log = logging.getLogger(__name__)


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
        self.fatal_after = int(fatal_after)
        self._on_event = on_event
        self.queue_capacity = int(queue_capacity or max(4, 2 * size * max_batch))
        self._cond = threading.Condition()  # queue, workers, counters
        self._queue: deque[QueuedFrame] = deque()
        self._crew = WorkerCrew(
            self,
            size,
            restarts=restarts,
            restart_window_s=restart_window_s,
            restart_delay_s=restart_delay_s,
        )
        self._closing = False
        self._failed = False
        self._submitted = self._rejected = 0
        self._batches = self._batched_frames = 0
        # the reorder buffer and the postprocess threads have their own locks: a worker hands
        # over and completes without touching the queue lock
        self._reorder = ReorderBuffer(gap_timeout_s, on_result=on_result, emit=self._emit)
        self._post = PostprocessThreads(
            post_threads,
            stages,
            complete=self._reorder.complete_many,
            fail=self.fail_items,
            capacity=lambda: 2 * max(1, self._crew.target),
        )
        self._start()

    def _start(self) -> None:
        self._post.start()
        self._reorder.start()
        with self._cond:
            for _ in range(self._crew.target):
                self._crew.start()

    @property
    def gap_timeout_s(self) -> float:
        return self._reorder.gap_timeout_s

    @property
    def post_threads(self) -> int:
        return self._post.count

    # ----------------------------------------------------------------- public API

    @property
    def size(self) -> int:
        """The target number of serving workers."""
        with self._cond:
            return self._crew.target

    @property
    def live_workers(self) -> int:
        """Worker threads alive, draining ones included (== size once a resize converged)."""
        with self._cond:
            return len(self._crew.workers)

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
            key = self._reorder.register(frame.source)
            self._queue.append(QueuedFrame(frame, key, time.monotonic()))
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
            old = self._crew.target
            self._failed = False
            events.extend(self._crew.resize(n))
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
            workers = self._crew.stats()
            serving = len(self._crew.serving())
            live = len(self._crew.workers)
            depth = len(self._queue)
            submitted, rejected, batches = self._submitted, self._rejected, self._batches
            mean = round(self._batched_frames / batches, 3) if batches else 0.0
            restarts, spent, failed = self._crew.restarts, self._crew.budget_spent, self._failed
        results, errors, skipped = self._reorder.counts()
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
        return self._reorder.wait_idle(timeout)

    def wait_converged(self, timeout: float) -> bool:
        """Wait until the live workers equal the target size and none is starting/draining."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._crew.converged():
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
            while (self._queue and self._crew.workers) or any(
                w.state is WorkerState.BUSY for w in self._crew.workers
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            leftover = list(self._queue)
            self._queue.clear()
            threads = self._crew.stop_all()
            self._cond.notify_all()
        self.fail_items(leftover, "queue", "dropped: the pool stopped", None)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        posted = self._post.close(deadline)  # postprocess what the workers handed over
        clean = posted and not any(t.is_alive() for t in threads)
        clean = self._reorder.finish(deadline) and clean
        self._emit(PoolEvent(PoolEventKind.STOPPED, "pool stopped", data={"clean": clean}))
        return clean

    # ----------------------------------------------------------------- workers

    def worker_ready(self, w: Worker) -> bool:
        with self._cond:
            if w.state is WorkerState.DRAINING:
                return False
            w.transition(WorkerState.IDLE)
            self._cond.notify_all()
        self._emit(PoolEvent(PoolEventKind.WORKER_STARTED, f"worker {w.id} serving", worker=w.id))
        return True

    def take(self, w: Worker) -> list[QueuedFrame] | None:
        with self._cond:
            while not self._queue:
                if w.state is WorkerState.DRAINING:
                    return None
                self._cond.wait()
            if w.state is WorkerState.DRAINING:
                return None
            batch = [self._queue.popleft()]
            w.batch = batch
            fill_batch(
                self._queue,
                self._cond,
                batch,
                max_batch=self.max_batch,
                timeout_s=self.batch_timeout_s,
                stop_waiting=lambda: w.state is WorkerState.DRAINING or self._closing,
            )
            if w.state is WorkerState.IDLE:
                w.transition(WorkerState.BUSY)
            self._batches += 1
            self._batched_frames += len(batch)
            w.batches += 1
            w.frames += len(batch)
            if self._queue:
                self._cond.notify_all()
            return batch

    def batch_done(self, w: Worker) -> None:
        with self._cond:
            w.batch = []
            if w.state is WorkerState.BUSY:
                w.transition(WorkerState.IDLE)
            self._cond.notify_all()

    def worker_exited(self, w: Worker, crash: BaseException | None) -> None:
        with self._cond:
            in_hand = list(w.batch)
            w.batch = []
            events = self._crew.retire(w, crash, replace=not self._closing)
            if not self._crew.workers and not self._closing:
                self._failed = True
                in_hand.extend(self._queue)
                self._queue.clear()
            self._cond.notify_all()
        if in_hand:
            why = f"worker {w.id} died" + (f": {type(crash).__name__}: {crash}" if crash else "")
            self.fail_items(in_hand, "worker", why, w.id)
        for ev in events:
            self._emit(ev)

    # ----------------------------------------------------------------- results

    def hand_over(self, job: PostJob) -> list[tuple[QueuedFrame, Result]]:
        """A worker's inferred batch: postprocessed here (returned) or by a postprocess
        thread (completed there; nothing returned)."""
        if self._post.count:
            self._post.put(job)
            return []
        return self._post.run(job)

    def complete_many(self, pairs: Sequence[tuple[QueuedFrame, Result]]) -> None:
        self._reorder.complete_many(pairs)

    def fail_items(
        self, items: Sequence[QueuedFrame], stage: str, error: str, worker: int | None
    ) -> None:
        if not items:
            return
        s = self.stages
        pairs = [
            (it, error_result(it.frame, stage, error, model=s.model, task=s.task)) for it in items
        ]
        self._reorder.complete_many(pairs)
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

    def _emit(self, event: PoolEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("on_event raised for %s", event.kind.value)
