"""Inline chunk messages: the typed :class:`Chunk` parsed from one message, and the bounded
buffer of chunks that came before their manifest (:class:`ChunkBuffer`).

A chunk message, as ``edge-agent push --inline`` writes it::

    {"kind": "chunk", "manifest_sha256": <64 hex>, "file": path, "index": i, "count": n,
     "data": base64}

Nothing in a chunk is trusted: which files, how many chunks and how large each is come from
the signed manifest (:class:`~agent.ota.assembler.ChunkAssembler`). Here a chunk is only checked for
shape, and every buffered chunk costs the whole size of the message it came in.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.ota.drops import DropCounter, DropReason
from agent.ota.manifest import CHUNK_KIND

__all__ = ["BufferLimits", "Chunk", "ChunkBuffer", "is_chunk_doc", "parse_chunk"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PATH = 1024


def is_chunk_doc(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind") == CHUNK_KIND


@dataclass(frozen=True)
class Chunk:
    """One chunk message, shape-checked only."""

    manifest_sha256: str
    file: str
    index: int
    #: the count the message claims (never trusted; a wrong one marks a forged chunk)
    count: int | None
    #: base64, as received
    data: str
    #: size of the whole message it came in: what buffering it costs
    wire_bytes: int


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_chunk(doc: Mapping[str, Any], wire_bytes: int) -> Chunk | DropReason:
    """The :class:`Chunk` of a chunk message, or why it was dropped (``bad_chunk``)."""
    sha, path, data = doc.get("manifest_sha256"), doc.get("file"), doc.get("data")
    index, count = _int(doc.get("index")), _int(doc.get("count"))
    ok = (
        isinstance(sha, str)
        and _SHA256.fullmatch(sha) is not None
        and isinstance(path, str)
        and 0 < len(path) <= _MAX_PATH
        and isinstance(data, str)
        and index is not None
        and index >= 0
        and (count is not None or doc.get("count") is None)
    )
    if not ok:
        return DropReason.BAD_CHUNK
    assert isinstance(sha, str) and isinstance(path, str) and isinstance(data, str)
    assert index is not None
    return Chunk(sha, path, index, count, data, wire_bytes)


@dataclass(frozen=True)
class BufferLimits:
    """Bounds of the chunks waiting for their manifest."""

    max_bytes: int = 16 * 1024 * 1024
    max_chunks: int = 2048
    max_manifests: int = 4


class ChunkBuffer:
    """Chunks that came before their manifest, bounded in bytes (whole message sizes), in
    chunks and in distinct manifests; the oldest manifest's chunks are evicted first, and a
    manifest alone over the bounds gets no more chunks. Not thread-safe (the updater's thread)."""

    def __init__(self, limits: BufferLimits, drops: DropCounter):
        self.limits = limits
        self.drops = drops
        self._chunks: OrderedDict[str, list[Chunk]] = OrderedDict()
        self.bytes = 0
        self.count = 0

    @property
    def manifests(self) -> int:
        return len(self._chunks)

    def add(self, chunk: Chunk) -> None:
        lim = self.limits
        if chunk.wire_bytes > lim.max_bytes:
            self.drops.count(DropReason.BUFFER_FULL, bytes=chunk.wire_bytes)
            return
        sha = chunk.manifest_sha256
        while self._chunks and (
            self.bytes + chunk.wire_bytes > lim.max_bytes
            or self.count + 1 > lim.max_chunks
            or (sha not in self._chunks and len(self._chunks) >= lim.max_manifests)
        ):
            oldest = next(iter(self._chunks))
            if oldest == sha:  # this manifest alone fills the buffer: keep what it has
                self.drops.count(DropReason.BUFFER_FULL, manifest_sha256=sha)
                return
            self._evict(oldest)
        self._chunks.setdefault(sha, []).append(chunk)
        self.bytes += chunk.wire_bytes
        self.count += 1

    def _evict(self, sha: str) -> None:
        dropped = self._chunks.pop(sha)
        self.bytes -= sum(c.wire_bytes for c in dropped)
        self.count -= len(dropped)
        self.drops.count(DropReason.EVICTED, len(dropped), manifest_sha256=sha)

    def take(self, sha: str) -> list[Chunk]:
        """The chunks buffered for ``sha`` (removed from the buffer)."""
        chunks = self._chunks.pop(sha, [])
        self.bytes -= sum(c.wire_bytes for c in chunks)
        self.count -= len(chunks)
        return chunks

    def discard(self, sha: str) -> None:
        """Forget the chunks of ``sha`` (its update is over), counted as ``finished``."""
        chunks = self.take(sha)
        if chunks:
            self.drops.count(DropReason.FINISHED, len(chunks), manifest_sha256=sha)
