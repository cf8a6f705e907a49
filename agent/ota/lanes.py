"""Raw OTA messages waiting for the updater thread, in bounded lanes.

* the *main* lane: every message, bounded in bytes and count;
* the *transfer* lane, open while an inline push collects its chunks: messages that name that
  push's manifest sha256 near their start (as ``edge-agent push --inline`` writes chunks) and are
  no larger than one of its chunks can be; bounded by the push's declared size plus slack. A
  flood of other messages fills the main lane and is dropped there, while the push's chunks
  still get through (an attacker may copy the public sha256 too: those messages are bounded
  the same way, and the assembler drops what does not fit the signed manifest);
* requests from the device itself (stop, rollback, resume): never bounded, taken first.

Dropped messages are counted (:class:`~agent.ota.drops.DropCounter`). Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agent.ota.drops import DropCounter, DropReason

__all__ = ["Lane", "Lanes"]

T = TypeVar("T")
#: how far into a message the transfer lane looks for the manifest sha256
_HEAD = 256


@dataclass
class Lane:
    """One bounded FIFO of raw payloads."""

    max_bytes: int
    max_items: int
    max_message: int
    items: deque[bytes] = field(default_factory=deque[bytes])
    held: int = 0

    def fits(self, size: int) -> bool:
        return (
            size <= self.max_message
            and len(self.items) < self.max_items
            and self.held + size <= self.max_bytes
        )

    def push(self, payload: bytes) -> None:
        self.items.append(payload)
        self.held += len(payload)

    def pop(self) -> bytes:
        payload = self.items.popleft()
        self.held -= len(payload)
        return payload


class Lanes(Generic[T]):
    """The main lane, the transfer lane (when open) and the device's own requests (``T``)."""

    def __init__(self, main: Lane, drops: DropCounter):
        self.main = main
        self.drops = drops
        self.transfer: Lane | None = None
        self._key = b""
        self._requests: deque[T] = deque()
        self._cond = threading.Condition()

    @property
    def queued_bytes(self) -> int:
        with self._cond:
            return self.main.held + (self.transfer.held if self.transfer else 0)

    def open_transfer(self, sha: str, lane: Lane) -> None:
        """Route messages naming ``sha`` near their start to ``lane`` (until closed)."""
        with self._cond:
            self.transfer, self._key = lane, sha.encode("ascii")

    def close_transfer(self) -> list[bytes]:
        """Close the transfer lane; returns what it still held."""
        with self._cond:
            lane, self.transfer, self._key = self.transfer, None, b""
            return list(lane.items) if lane is not None else []

    def submit(self, payload: bytes) -> bool:
        """Queue one network message; False when dropped (counted)."""
        size = len(payload)
        with self._cond:
            lane = self.main
            if self.transfer is not None and self._key in payload[:_HEAD]:
                lane = self.transfer if self.transfer.fits(size) else self.main
            ok = lane.fits(size)
            if ok:
                lane.push(payload)
                self._cond.notify()
        if not ok:
            reason = DropReason.TOO_LARGE if size > lane.max_message else DropReason.QUEUE_FULL
            self.drops.count(reason, bytes=size)
        return ok

    def put(self, request: T) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify()

    def take(self, timeout_s: float) -> bytes | T | None:
        """The next request, else transfer-lane message, else main-lane message; None when
        nothing came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._requests:
                    return self._requests.popleft()
                if self.transfer is not None and self.transfer.items:
                    return self.transfer.pop()
                if self.main.items:
                    return self.main.pop()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
