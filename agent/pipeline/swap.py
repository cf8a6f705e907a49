"""Hot swap: serve a new engine from one frame to the next, without stopping the sources.

A new pool (same size) makes its runners and runs one warm-up inference per worker while the
old pool keeps serving. Then the dispatcher holds between two frames, the old pool delivers
what it has in flight (results stay in order per source), the new pool takes over, and the
dispatcher goes on: file sources lose no frame (they wait in their queue), live sources drop at
most what arrives during the drain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core.errors import PipelineError
from agent.pipeline.dispatcher import Dispatcher
from agent.pipeline.pool.pool import WorkerPool
from agent.pipeline.stages import PoolMaker, ServedModel
from agent.pipeline.stats import StatsBook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapReport:
    """How a swap went: warm-up time, the gap with no frame dispatched, and whether the old
    pool delivered everything in flight."""

    warmup_s: float
    gap_ms: float
    drained: bool

    def to_json(self) -> dict[str, Any]:
        return {"warmup_s": self.warmup_s, "gap_ms": self.gap_ms, "drained": self.drained}


class HotSwap:
    """Swaps the model a :class:`Dispatcher` serves. ``resize_lock`` is the lock the
    governor's resizes take, so a resize lands on the pool that serves next."""

    def __init__(
        self,
        name: str,
        dispatcher: Dispatcher,
        pools: PoolMaker,
        book: StatsBook,
        *,
        resize_lock: threading.Lock,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self._dispatcher = dispatcher
        self.pools = pools
        self._book = book
        self._resize_lock = resize_lock
        self._clock = clock

    def swap(
        self, new_model: ServedModel, *, warmup_timeout_s: float, drain_timeout_s: float
    ) -> SwapReport:
        """Raises :class:`PipelineError`, with the old model still serving, when the new
        workers do not start."""
        t0 = self._clock()
        new_pool = self._warm_up(new_model, t0 + warmup_timeout_s)
        warmup_s = self._clock() - t0
        d = self._dispatcher
        try:
            d.hold()
            t_hold = self._clock()
            old = d.pool
            drained = old.wait_idle(drain_timeout_s)
            with self._resize_lock:
                if new_pool.size != old.size:  # the governor resized the old pool meanwhile
                    new_pool.resize(old.size)
                d.install(new_model, new_pool)
                self._book.swapped()  # figures from now on: the new engine
        finally:
            d.release()
        gap_ms = (self._clock() - t_hold) * 1000.0
        old.stop(timeout=drain_timeout_s)
        log.info(
            "model %s: now serving %s (warm-up %.2f s, dispatch gap %.1f ms)",
            self.name,
            new_model.artifact.dir.name,
            warmup_s,
            gap_ms,
        )
        return SwapReport(warmup_s=round(warmup_s, 3), gap_ms=round(gap_ms, 2), drained=drained)

    def _warm_up(self, new_model: ServedModel, deadline: float) -> WorkerPool:
        """A new pool at the serving size, once every worker is warm."""
        new_pool = self.pools.make(new_model, self._dispatcher.pool.size)
        while not new_pool.wait_converged(0.1):
            st = new_pool.stats()
            if st.failed or st.restarts > 0 or self._clock() >= deadline:
                new_pool.stop(timeout=2.0)
                why = "timed out" if self._clock() >= deadline else "a worker failed to start"
                raise PipelineError(
                    f"model '{self.name}': the new engine {new_model.artifact.dir.name} did "
                    f"not start ({why}); the old engine keeps serving",
                    fix="check the engine with `edge-agent engine infer` and the log above",
                )
        return new_pool
