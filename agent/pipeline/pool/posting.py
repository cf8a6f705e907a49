"""Postprocess hand-off: an inferred batch → per-frame results with their stage timings.

With ``count`` = 0 a worker postprocesses its own batch (:meth:`PostprocessThreads.run`); with
N > 0 it hands the batch to N postprocess threads (a queue of ``2 × size`` batches,
back-pressure beyond) and goes straight on to its next inference.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from agent.pipeline.frames import Result
from agent.pipeline.pool.batching import PostJob, QueuedFrame
from agent.pipeline.pool.work import Stages

Pairs = list[tuple[QueuedFrame, Result]]
Complete = Callable[[Sequence[tuple[QueuedFrame, Result]]], None]
Fail = Callable[[Sequence[QueuedFrame], str, str, "int | None"], None]


def postprocess_batch(stages: Stages, job: PostJob) -> Pairs:
    """Postprocess one batch and stamp the per-frame stage timings."""
    frames = [it.frame for it in job.batch]
    timings = {
        "preprocess": (job.t_pre - job.t_pick) * 1000.0,
        "infer": (job.t_inf - job.t_pre) * 1000.0,
    }
    t_post0 = time.monotonic()
    results = list(stages.postprocess(frames, job.outputs, job.letterboxes, timings))
    if len(results) != len(frames):
        raise RuntimeError(f"postprocess returned {len(results)} results for {len(frames)} frames")
    t_post = time.monotonic()
    out: Pairs = []
    for item, result in zip(job.batch, results, strict=True):
        timings_ms = dict(result.timings_ms)
        timings_ms.setdefault("preprocess", timings["preprocess"])
        timings_ms.setdefault("infer", timings["infer"])
        timings_ms["queue"] = max(0.0, (job.t_pick - item.frame.t_capture) * 1000.0)
        timings_ms["postprocess"] = (t_post - t_post0) * 1000.0
        timings_ms["total"] = max(0.0, (t_post - item.frame.t_capture) * 1000.0)
        out.append((item, dataclasses.replace(result, timings_ms=timings_ms)))
    return out


class PostprocessThreads:
    """``count`` postprocess threads behind one bounded job queue. ``capacity()`` is read on
    each put (it follows the pool's size); ``complete``/``fail`` hand results on."""

    def __init__(
        self,
        count: int,
        stages: Stages,
        *,
        complete: Complete,
        fail: Fail,
        capacity: Callable[[], int],
    ) -> None:
        self.count = max(0, int(count))
        self._stages = stages
        self._complete = complete
        self._fail = fail
        self._capacity = capacity
        self._cond = threading.Condition()
        self._queue: deque[PostJob] = deque()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"pool-post-{i}", daemon=True)
            for i in range(self.count)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def run(self, job: PostJob) -> Pairs:
        """Postprocess in the calling thread (a worker, when ``count`` is 0)."""
        return postprocess_batch(self._stages, job)

    def put(self, job: PostJob) -> None:
        """Hand a batch to the postprocess threads; waits while ``capacity()`` batches queue."""
        with self._cond:
            while len(self._queue) >= self._capacity() and not self._closing:
                self._cond.wait(0.1)
            self._queue.append(job)
            self._cond.notify_all()

    def close(self, deadline: float) -> bool:
        """Postprocess what was handed over, then stop; True when every thread finished."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(max(0.05, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closing:
                        return
                    self._cond.wait(0.5)
                job = self._queue.popleft()
                self._cond.notify_all()
            try:
                self._complete(self.run(job))
            except Exception as exc:
                self._per_frame(job, exc)

    def _per_frame(self, job: PostJob, exc: Exception) -> None:
        """A batch failed postprocess: retry frame by frame where the outputs are batch-major,
        so only the frame at fault gets an error result."""
        n = len(job.batch)
        rows = all(getattr(v, "ndim", 0) >= 1 and v.shape[0] >= n for v in job.outputs.values())
        if n == 1 or not rows:
            self._fail(job.batch, "postprocess", f"{type(exc).__name__}: {exc}", None)
            return
        for i, item in enumerate(job.batch):
            single = dataclasses.replace(
                job,
                batch=[item],
                outputs={k: v[i : i + 1] for k, v in job.outputs.items()},
                letterboxes=[job.letterboxes[i]],
            )
            try:
                self._complete(self.run(single))
            except Exception as err:
                self._fail([item], "postprocess", f"{type(err).__name__}: {err}", None)
