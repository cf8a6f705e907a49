"""The updater's inbox: queued messages and commands, chunks that came before their manifest,
and the manifests already processed (QoS 1 redelivery is ignored, not rejected).

Everything fed from the network is bounded in bytes *and* count: the messages not yet looked at
(:class:`InboxLimits`, :mod:`agent.ota.lanes`: a push collecting its chunks has its own lane, so
that a flood of other messages cannot crowd them out), the envelopes held back meanwhile, the
chunks waiting for their manifest (:class:`~agent.ota.chunks.ChunkBuffer`). JSON is parsed by
:func:`~agent.core.jsonlimits.loads_bounded` (size, depth and items checked before parsing).
Whatever is refused is dropped and counted in :attr:`Inbox.drops`, never raised.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded
from agent.ota.chunks import BufferLimits, Chunk, ChunkBuffer, is_chunk_doc, parse_chunk
from agent.ota.control import Stopped
from agent.ota.drops import DropCounter, DropReason
from agent.ota.lanes import Lane, Lanes
from agent.ota.record import UpdateRecord
from agent.ota.states import UpdateState

_MIB = 1024 * 1024
#: bytes of JSON around one chunk's base64 in a chunk message
_SLACK = 1024


@dataclass(frozen=True)
class Envelope:
    """A message that is a JSON object and not a chunk: a (claimed) signed envelope."""

    doc: dict[str, Any]
    wire_bytes: int


@dataclass(frozen=True)
class RollbackRequest:
    model: str
    future: concurrent.futures.Future[dict[str, Any]]


@dataclass(frozen=True)
class ResumeRequest:
    record: UpdateRecord
    start: UpdateState


@dataclass(frozen=True)
class StopRequest:
    pass


Item = Envelope | RollbackRequest | ResumeRequest | StopRequest


@dataclass(frozen=True)
class InboxLimits:
    """Bounds of what the network can make the inbox hold."""

    #: one message (an envelope or a chunk)
    max_message_bytes: int = 4 * _MIB
    #: messages queued and not looked at yet (envelopes deferred during a transfer included)
    max_queued_bytes: int = 16 * _MIB
    max_queued: int = 1024
    #: envelopes held back while a transfer collects its chunks
    max_deferred: int = 64
    json_depth: int = 16
    json_items: int = 20_000
    buffer: BufferLimits = field(default_factory=BufferLimits)

    def json(self) -> JsonLimits:
        return JsonLimits(self.max_message_bytes, self.json_depth, self.json_items)


def classify(payload: bytes, limits: JsonLimits) -> Envelope | Chunk | DropReason:
    """A message as an envelope, a chunk, or the reason it is dropped."""
    try:
        doc: Any = loads_bounded(payload, limits)
    except JsonRejected as exc:
        return DropReason(exc.reason)
    if not isinstance(doc, dict):
        return DropReason.NOT_AN_OBJECT
    if is_chunk_doc(doc):  # pyright: ignore[reportUnknownArgumentType]
        return parse_chunk(doc, len(payload))  # pyright: ignore[reportUnknownArgumentType]
    return Envelope(doc, len(payload))  # pyright: ignore[reportUnknownArgumentType]


class Inbox:
    def __init__(self, limits: InboxLimits | None = None, drops: DropCounter | None = None):
        self.limits = lim = limits or InboxLimits()
        self.drops = drops or DropCounter()
        self._json = lim.json()
        main = Lane(lim.max_queued_bytes, lim.max_queued, lim.max_message_bytes)
        self._lanes: Lanes[Item] = Lanes(main, self.drops)
        #: envelopes met while a transfer collects its chunks (bounded like the main lane)
        self._deferred: deque[Item] = deque()
        self._deferred_bytes = 0
        self.pending = ChunkBuffer(lim.buffer, self.drops)
        self._finished: deque[str] = deque(maxlen=64)

    @property
    def queued_bytes(self) -> int:
        """Bytes of network messages queued or deferred, not yet handed out."""
        return self._lanes.queued_bytes + self._deferred_bytes

    def submit(self, payload: bytes) -> bool:
        """Queue one OTA message (cheap and thread-safe: the MQTT callback calls it); False
        when it was dropped (too large, or its lane is full)."""
        return self._lanes.submit(bytes(payload))

    def put(self, item: Item) -> None:
        """Queue a request from the device itself (never bounded, never dropped)."""
        self._lanes.put(item)

    def _look(self, payload: bytes) -> Envelope | Chunk | None:
        """Parse a queued message; a dropped one is counted and gives None."""
        found = classify(payload, self._json)
        if isinstance(found, DropReason):
            self.drops.count(found, bytes=len(payload))
            return None
        return found

    def next(self, timeout_s: float) -> Item | None:
        """The next envelope or request (deferred ones first); chunks met on the way are
        buffered for their manifest, dropped messages counted. None when nothing came in
        time."""
        if self._deferred:
            item = self._deferred.popleft()
            if isinstance(item, Envelope):
                self._deferred_bytes -= item.wire_bytes
            return item
        deadline = time.monotonic() + timeout_s
        while True:
            raw = self._lanes.take(max(0.0, deadline - time.monotonic()))
            if not isinstance(raw, bytes):
                return raw
            found = self._look(raw)
            if isinstance(found, Chunk):
                self.buffer_chunk(found)
            elif found is not None:
                return found

    @contextlib.contextmanager
    def transfer(self, sha: str, chunk_size: int, total_bytes: int) -> Iterator[None]:
        """While an inline push ``sha`` collects its chunks: its chunk messages (at most one
        chunk's worth of base64 plus slack, the push's total plus slack in all) get their own
        lane; what is left in it at the end is dropped (``finished``)."""
        message = 4 * ((chunk_size + 2) // 3) + _SLACK
        chunks = total_bytes // chunk_size + 1
        lane = Lane(4 * (total_bytes // 3) + _MIB + chunks * _SLACK, 2 * chunks + 256, message)
        self._lanes.open_transfer(sha, lane)
        try:
            yield
        finally:
            left = self._lanes.close_transfer()
            if left:
                self.drops.count(DropReason.FINISHED, len(left), manifest_sha256=sha)

    def next_chunk(self, sha: str, timeout_s: float) -> Chunk | None:
        """A chunk of the push ``sha`` from the queue, while an inline update collects its
        chunks; other chunks are buffered and other items deferred. Raises Stopped."""
        raw = self._lanes.take(timeout_s)
        if raw is None:
            return None
        if isinstance(raw, StopRequest):
            raise Stopped
        found = self._look(raw) if isinstance(raw, bytes) else raw
        if isinstance(found, Chunk):
            if found.manifest_sha256 == sha:
                return found
            self.buffer_chunk(found)
        elif found is not None:
            self._defer(found)
        return None

    def _defer(self, item: Item) -> None:
        size = item.wire_bytes if isinstance(item, Envelope) else 0
        lim = self.limits
        if size and (
            len(self._deferred) >= lim.max_deferred
            or self._deferred_bytes + size > lim.max_queued_bytes
        ):
            self.drops.count(DropReason.QUEUE_FULL, bytes=size)
            return
        self._deferred.append(item)
        self._deferred_bytes += size

    def buffer_chunk(self, chunk: Chunk) -> None:
        """A chunk with no update collecting it (it came before its manifest): keep it within
        the buffer's bounds; one of a manifest already processed is dropped."""
        if chunk.manifest_sha256 in self._finished:
            self.drops.count(DropReason.FINISHED, manifest_sha256=chunk.manifest_sha256)
            return
        self.pending.add(chunk)

    def take_chunks(self, sha: str) -> list[Chunk]:
        """The chunks buffered for the push ``sha`` (removed from the buffer)."""
        return self.pending.take(sha)

    def mark_finished(self, sha: str) -> None:
        self.pending.discard(sha)
        if sha not in self._finished:
            self._finished.append(sha)

    def forget_finished(self, sha: str) -> None:
        """``sha`` may be processed again (a retry of a failed transfer)."""
        while sha in self._finished:
            self._finished.remove(sha)

    def is_finished(self, sha: str) -> bool:
        return sha in self._finished
