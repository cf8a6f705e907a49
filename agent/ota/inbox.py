"""The updater's inbox: queued messages and commands, chunks that came before their manifest
(bounded), and the manifests already processed (QoS 1 redelivery is ignored, not rejected)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from agent.core.logs import log_fields
from agent.ota.control import Stopped
from agent.ota.fetch import is_chunk_message
from agent.ota.record import UpdateRecord
from agent.ota.states import UpdateState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One message from the OTA topic: an envelope or a chunk."""

    payload: bytes

    def chunk(self) -> dict[str, Any] | None:
        """The message as a chunk, or None when it is not one."""
        doc = parse_json(self.payload)
        return doc if isinstance(doc, dict) and is_chunk_message(doc) else None  # pyright: ignore[reportUnknownArgumentType,reportUnknownVariableType]


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


Item = Message | RollbackRequest | ResumeRequest | StopRequest


def parse_json(payload: bytes) -> Any:
    """The payload as JSON, or None."""
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _chunk_size(chunk: dict[str, Any]) -> int:
    return len(str(chunk.get("data", "")))


class Inbox:
    def __init__(self, max_bytes: int):
        #: bound of one message, and of all chunks waiting for their manifest
        self.max_bytes = max_bytes
        self._queue: queue.Queue[Item] = queue.Queue()
        self._deferred: deque[Item] = deque()
        self.pending_chunks: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.pending_bytes = 0
        self._finished: deque[str] = deque(maxlen=64)

    def submit(self, payload: bytes) -> None:
        """Queue one OTA message (cheap and thread-safe: the MQTT callback calls it)."""
        if len(payload) > self.max_bytes:
            log.warning("OTA message too large, dropped", extra=log_fields(bytes=len(payload)))
            return
        self._queue.put(Message(bytes(payload)))

    def put(self, item: Item) -> None:
        self._queue.put(item)

    def next(self, timeout_s: float) -> Item | None:
        """The next item: deferred ones first; None when none came in time."""
        if self._deferred:
            return self._deferred.popleft()
        try:
            return self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def next_chunk(self, sha: str, timeout_s: float) -> dict[str, Any] | None:
        """A chunk of the push ``sha`` from the queue, while an inline update collects its
        chunks; other chunks are buffered and other items deferred. Raises Stopped."""
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, StopRequest):
            raise Stopped
        chunk = item.chunk() if isinstance(item, Message) else None
        if chunk is None:
            self._deferred.append(item)
            return None
        if chunk.get("manifest_sha256") == sha:
            return chunk
        self.buffer_chunk(chunk)
        return None

    def buffer_chunk(self, chunk: dict[str, Any]) -> None:
        """A chunk with no update waiting for it (it came before its manifest): keep it, within
        the bound in all, oldest pushes dropped first."""
        sha = chunk.get("manifest_sha256")
        if not isinstance(sha, str) or sha in self._finished:
            return
        size = _chunk_size(chunk)
        self.pending_chunks.setdefault(sha, []).append(chunk)
        self.pending_bytes += size
        while self.pending_bytes > self.max_bytes and len(self.pending_chunks) > 1:
            _old, dropped = self.pending_chunks.popitem(last=False)
            self.pending_bytes -= sum(_chunk_size(c) for c in dropped)
        if self.pending_bytes > self.max_bytes:  # one push alone is over the bound
            self.pending_chunks[sha].pop()
            self.pending_bytes -= size
            log.warning(
                "OTA chunk dropped: chunks waiting for their manifest exceed the buffer",
                extra=log_fields(manifest_sha256=sha, buffered_bytes=self.pending_bytes),
            )

    def take_chunks(self, sha: str) -> list[dict[str, Any]]:
        """The chunks buffered for the push ``sha`` (removed from the buffer)."""
        chunks = self.pending_chunks.pop(sha, [])
        self.pending_bytes -= sum(_chunk_size(c) for c in chunks)
        return chunks

    def mark_finished(self, sha: str) -> None:
        self._finished.append(sha)

    def is_finished(self, sha: str) -> bool:
        return sha in self._finished
