"""The bounded frame queue between a source's decode thread and the dispatcher.

Its :class:`DropPolicy` is named: ``NEWEST_WINS`` for live sources (the oldest queued frame is
dropped and counted), ``BLOCK`` for files and image folders (the decoder waits for the
consumer; nothing is lost).
"""

from __future__ import annotations

import enum
import threading
from collections import deque

from agent.pipeline.frames import Frame


class DropPolicy(str, enum.Enum):
    NEWEST_WINS = "newest_wins"  # full queue: drop the oldest queued frame, count it
    BLOCK = "block"  # full queue: the decode thread waits for the consumer


class FrameQueue:
    """A bounded frame queue with a named drop policy. ``close()`` wakes every waiter: ``put``
    then refuses frames and ``get`` returns what is left, then ``None`` at once."""

    def __init__(self, capacity: int, policy: DropPolicy) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.policy = policy
        self.dropped = 0
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closed = False
        #: set on every put and on close: lets one consumer wait on several queues at once
        self.listener: threading.Event | None = None

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Enqueue; ``False`` if the queue is closed (or, for BLOCK, ``timeout`` passed)."""
        with self._cond:
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                if self.policy is DropPolicy.NEWEST_WINS:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    ok = self._cond.wait_for(
                        lambda: self._closed or len(self._items) < self.capacity, timeout
                    )
                    if not ok or self._closed:
                        return False
            self._items.append(frame)
            self._cond.notify_all()
        if self.listener is not None:
            self.listener.set()
        return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame, or ``None`` after ``timeout`` or once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.listener is not None:
            self.listener.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exhausted(self) -> bool:
        """Closed and drained: no frame will ever come out again."""
        with self._cond:
            return self._closed and not self._items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
