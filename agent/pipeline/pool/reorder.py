"""The reorder buffer: results delivered in submission order per source, from one thread.

It is keyed by (source, submission sequence), not by ``Frame.index``: index gaps are frames a
source already dropped (never submitted, so never waited for), and a source that restarts its
count cannot collide with itself. A head-of-line frame whose result has not come
``gap_timeout_s`` after a later frame of its source finished is skipped (``FRAME_SKIPPED``
event; its late result is dropped): a stuck frame never stalls its source forever.
``on_result`` is called from the delivery thread, one result at a time; an exception there is
logged and does not stop delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from agent.pipeline.frames import Result
from agent.pipeline.pool.batching import QueuedFrame
from agent.pipeline.pool.events import PoolEvent, PoolEventKind
from agent.pipeline.pool.work import result_error

log = logging.getLogger(__name__)


class ReorderBuffer:
    """Holds finished results until their source's earlier frames are delivered."""

    def __init__(
        self,
        gap_timeout_s: float,
        *,
        on_result: Callable[[Result], None],
        emit: Callable[[PoolEvent], None],
    ) -> None:
        self.gap_timeout_s = float(gap_timeout_s)
        self._on_result = on_result
        self._emit = emit
        self._cond = threading.Condition()
        self._seq: dict[str, int] = {}
        self._pending: dict[str, deque[int]] = {}
        self._ready: dict[tuple[str, int], Result] = {}
        self._ready_count: dict[str, int] = {}
        self._blocked_since: dict[str, float] = {}
        self._skipped: set[tuple[str, int]] = set()
        self._delivering = 0  # results taken out of the buffer, on_result not yet returned
        self._final = False
        self.results = 0
        self.errors = 0
        self.skips = 0
        self._thread = threading.Thread(target=self._loop, name="pool-delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def register(self, source: str) -> tuple[str, int]:
        """The key of the next frame ``source`` submits; its result is awaited in order."""
        with self._cond:
            seq = self._seq.get(source, 0)
            self._seq[source] = seq + 1
            self._pending.setdefault(source, deque()).append(seq)
        return (source, seq)

    def counts(self) -> tuple[int, int, int]:
        """(results, errors, skipped) delivered so far."""
        with self._cond:
            return self.results, self.errors, self.skips

    def complete_many(self, pairs: Sequence[tuple[QueuedFrame, Result]]) -> None:
        late: list[QueuedFrame] = []
        with self._cond:
            for item, result in pairs:
                if item.key in self._skipped:
                    self._skipped.discard(item.key)
                    late.append(item)
                    continue
                self._ready[item.key] = result
                src = item.key[0]
                self._ready_count[src] = self._ready_count.get(src, 0) + 1
            self._cond.notify_all()
        for item in late:
            self._emit(
                PoolEvent(
                    PoolEventKind.LATE_RESULT_DROPPED,
                    "result came after its slot was skipped; dropped to keep order",
                    source=item.frame.source,
                    index=item.frame.index,
                )
            )

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every registered frame has been delivered (or skipped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(self._pending.values()) or self._delivering:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def finish(self, deadline: float) -> bool:
        """Skip what will never come, deliver the rest and stop; True when delivery ended."""
        with self._cond:
            self._final = True
            self._cond.notify_all()
        self._thread.join(max(0.05, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _collect(self, now: float) -> tuple[list[Result], list[PoolEvent], float | None]:
        """Pop deliverable results in order (lock held). Returns results, skip events and the
        next gap deadline."""
        out: list[Result] = []
        events: list[PoolEvent] = []
        next_deadline: float | None = None
        for src in list(self._pending):
            deadline = self._collect_source(src, now, out, events)
            if deadline is not None:
                next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
        self._delivering += len(out)
        self.results += len(out)
        self.errors += sum(1 for r in out if result_error(r) is not None)
        return out, events, next_deadline

    def _collect_source(
        self, src: str, now: float, out: list[Result], events: list[PoolEvent]
    ) -> float | None:
        """Pop ``src``'s deliverable results into ``out``; its gap deadline when blocked."""
        pending = self._pending[src]
        deadline: float | None = None
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
                self.skips += 1
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
            break
        if not pending:
            del self._pending[src]
            self._ready_count.pop(src, None)
        return deadline

    def _loop(self) -> None:
        while True:
            with self._cond:
                out, events, deadline = self._collect(time.monotonic())
                if not out and not events:
                    if self._final and not self._pending:
                        return
                    wait = 0.5 if deadline is None else max(0.001, deadline - time.monotonic())
                    self._cond.wait(min(wait, 0.5))
                    continue
            for ev in events:
                self._emit(ev)
            for result in out:
                try:
                    self._on_result(result)
                except Exception:
                    log.exception("on_result raised for %s#%d", result.source, result.index)
            with self._cond:
                self._delivering -= len(out)
                self._cond.notify_all()
