"""The dispatcher: one thread moving frames from the sources' queues into the worker pool.

It applies the governor's limits (an fps cap per source; shedding: live frames go in only when
no work is queued), the drop policies at the pool (files wait for room, live frames are
dropped and counted), and, on the CPU path, preprocesses each frame before it is queued. A hot
swap asks it to hold between two frames (:meth:`Dispatcher.hold`) and then installs the new
model and pool in one step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from agent.pipeline.frames import Frame
from agent.pipeline.pool.pool import WorkerPool
from agent.pipeline.sources.base import Source
from agent.pipeline.sources.queue import DropPolicy
from agent.pipeline.stages import ServedModel, prepare_frame
from agent.pipeline.stats import StatsBook

log = logging.getLogger(__name__)


class Dispatcher:
    """Serves ``model`` through ``pool`` (both replaced together by :meth:`install`).
    ``prepare_ahead``: make each frame's model input here (CPU path) rather than on a worker's
    stream (GPU path)."""

    def __init__(
        self,
        name: str,
        sources: Mapping[str, Source],
        book: StatsBook,
        *,
        model: ServedModel,
        pool: WorkerPool,
        prepare_ahead: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.sources = sources
        self.model = model
        self.pool = pool
        self._book = book
        self._prepare_ahead = prepare_ahead
        self._clock = clock
        self.latest: dict[str, np.ndarray] = {}  # newest frame per source (snapshot command)
        self.fps_cap: float | None = None
        self.shed = False
        self._next_at: dict[str, float] = {}  # earliest time a source's next frame may go in
        self.stop_event = threading.Event()
        self.done = threading.Event()  # every source is exhausted and dispatched
        self._pause = threading.Event()  # a swap asks to hold between frames
        self._held = threading.Event()  # holding (no frame in hand)
        self.thread = threading.Thread(target=self._run, name=f"dispatch-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def limit(self, *, fps_cap: float | None, shed_frames: bool) -> None:
        self.fps_cap = fps_cap if fps_cap is None or fps_cap > 0 else None
        self.shed = shed_frames

    def hold(self) -> None:
        """Ask the thread to park between two frames and wait until it does (or has ended)."""
        self._pause.set()
        if self.done.is_set():
            return
        # It parks within a few ms (a BLOCK submit waits for room in the pool, which keeps
        # serving).
        while not self._held.wait(0.05) and not self.done.is_set():
            if self.stop_event.is_set():
                break

    def install(self, model: ServedModel, pool: WorkerPool) -> None:
        """The model and pool to serve from the next frame on (while held)."""
        self.model = model
        self.pool = pool

    def release(self) -> None:
        self._pause.clear()

    def _run(self) -> None:
        sources = list(self.sources.values())
        ready = threading.Event()  # set by any source's queue on put/close: no polling delay
        for src in sources:
            src.queue.listener = ready
        while not self.stop_event.is_set():
            if self._pause.is_set():  # a swap is under way: hold, no frame in hand
                self._held.set()
                self.stop_event.wait(0.001)
                continue
            self._held.clear()
            ready.clear()  # before the scan: a frame queued during it sets it again
            moved = False
            for src in sources:
                frame = src.read(timeout=0)
                if frame is None:
                    continue
                moved = True
                self.latest[src.name] = frame.image
                self._submit(src, frame)
            if not moved:
                # Exhausted = the decode thread finished and its queue is drained; checking it
                # consumes nothing, so a last frame queued just now is still dispatched.
                if all(s.queue.exhausted for s in sources):
                    break
                ready.wait(0.05)
        self.done.set()

    def _admit(self, src: Source) -> bool:
        """The governor's limits: an fps cap per source, and shedding (live frames go in only
        when no work is queued). Files are slowed down instead of dropped."""
        cap, shed = self.fps_cap, self.shed
        now = self._clock()
        next_at = self._next_at.get(src.name, 0.0)
        if cap is not None and now < next_at:
            if src.policy is DropPolicy.BLOCK:
                self.stop_event.wait(next_at - now)
                now = self._clock()
            else:
                self._book.count_shed(src.name)
                return False
        if shed and src.policy is not DropPolicy.BLOCK and self.pool.backlog > 0:
            self._book.count_shed(src.name)
            return False
        if cap is not None:
            self._next_at[src.name] = max(now, next_at) + 1.0 / cap
        return True

    def _submit(self, src: Source, frame: Frame) -> None:
        if not self._admit(src):
            return
        pool = self.pool
        if self._prepare_ahead:
            if src.policy is not DropPolicy.BLOCK and pool.full:
                self._book.count_rejected(src.name)
                return
            frame = prepare_frame(self.model, frame)
        if src.policy is DropPolicy.BLOCK:
            # Files: back-pressure, never drop.
            while not pool.submit(frame):
                if self.stop_event.is_set() or pool.failed:
                    return
                time.sleep(0.0002)  # the pool is saturated: a worker frees a slot shortly
            return
        if not pool.submit(frame):
            self._book.count_rejected(src.name)
