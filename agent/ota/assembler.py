"""Assembling an inline push from chunk messages, bound to the verified manifest.

Which files, how many chunks each and how many bytes each chunk holds come from the signed
manifest only. A chunk that does not fit it (another manifest, an unknown file, an index or a
count the manifest does not give, data that is not base64 or not the expected length, a second
copy with other bytes) is *dropped* and reported to the caller, never raised: one forged
message cannot fail an update. Only a file whose assembled bytes differ from the signed hash
fails it, in :meth:`ChunkAssembler.finish` (all chunks arrived or the deadline passed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from agent.core.errors import OtaError, OtaReason, OtaRejected
from agent.ota.chunks import Chunk, is_chunk_doc, parse_chunk
from agent.ota.drops import DropReason
from agent.ota.manifest import FileEntry, Manifest

__all__ = ["Added", "ChunkAssembler", "is_chunk_message"]

#: ``progress(done_bytes, total_bytes, message)``
Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, message: str) -> None:
    del done, total, message


def is_chunk_message(doc: Mapping[str, Any]) -> bool:
    return is_chunk_doc(doc)


class Added(str, Enum):
    """What :meth:`ChunkAssembler.add` did with a chunk it kept."""

    STORED = "stored"
    DUPLICATE = "duplicate"


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


class ChunkAssembler:
    """Assembles an inline push from its chunks, in any order, duplicates tolerated.

    Each chunk is written at ``index * chunk_size`` of its staging file; :meth:`finish`
    checks that nothing is missing, then sizes and hashes.
    """

    def __init__(
        self,
        manifest: Manifest,
        manifest_sha: str,
        staging: Path,
        *,
        progress: Progress = _no_progress,
    ):
        if manifest.payload.kind != "inline" or manifest.payload.chunk_size is None:
            raise OtaError(
                "ChunkAssembler needs an inline payload",
                reason=OtaReason.INTERNAL,
                fix="use a url fetch",
            )
        self.manifest = manifest
        self.sha = manifest_sha
        self.staging = staging
        self.chunk_size = manifest.payload.chunk_size
        self.progress = progress
        self.entries = {f.path: f for f in manifest.files}
        self.expected = {f.path: manifest.payload.chunk_count(f.size) for f in manifest.files}
        self.received: dict[str, set[int]] = {p: set() for p in self.expected}
        self.digests: dict[tuple[str, int], bytes] = {}
        self.bytes_received = 0
        for entry in manifest.files:
            path = staging / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                handle.truncate(entry.size)

    @property
    def total_chunks(self) -> int:
        return sum(self.expected.values())

    @property
    def complete(self) -> bool:
        return all(len(self.received[p]) == n for p, n in self.expected.items())

    def missing(self) -> dict[str, list[int]]:
        return {
            p: [i for i in range(n) if i not in self.received[p]]
            for p, n in self.expected.items()
            if len(self.received[p]) != n
        }

    def _want(self, entry: FileEntry, index: int) -> int:
        """Bytes chunk ``index`` of ``entry`` holds, by the manifest."""
        start = index * self.chunk_size
        return min(self.chunk_size, entry.size - start) if entry.size else 0

    def _check(self, chunk: Chunk) -> DropReason | bytes:
        """The chunk's bytes, or why it does not fit the manifest."""
        if chunk.manifest_sha256 != self.sha:
            return DropReason.OTHER_MANIFEST
        entry = self.entries.get(chunk.file)
        if entry is None:
            return DropReason.UNKNOWN_FILE
        n = self.expected[chunk.file]
        if not 0 <= chunk.index < n:
            return DropReason.BAD_INDEX
        if chunk.count is not None and chunk.count != n:
            return DropReason.COUNT_MISMATCH
        want = self._want(entry, chunk.index)
        if len(chunk.data) > _b64_len(want):  # before decoding anything
            return DropReason.OVERSIZED
        try:
            block = base64.b64decode(chunk.data, validate=True)
        except (binascii.Error, ValueError):
            return DropReason.NOT_BASE64
        return block if len(block) == want else DropReason.WRONG_SIZE

    def add(self, msg: Chunk | Mapping[str, Any]) -> Added | DropReason:
        """Take one chunk: :class:`Added` when kept (or an identical duplicate), else the
        :class:`~agent.ota.drops.DropReason` it was dropped for (count it). A second copy of
        a chunk with other bytes is dropped (``conflict``): the first one stays."""
        chunk = msg if isinstance(msg, Chunk) else parse_chunk(msg, 0)
        if isinstance(chunk, DropReason):
            return chunk
        block = self._check(chunk)
        if isinstance(block, DropReason):
            return block
        path, index = chunk.file, chunk.index
        digest = hashlib.sha256(block).digest()
        if index in self.received[path]:
            same = self.digests[(path, index)] == digest
            return Added.DUPLICATE if same else DropReason.CONFLICT
        with (self.staging / path).open("r+b") as handle:
            handle.seek(index * self.chunk_size)
            handle.write(block)
        self.received[path].add(index)
        self.digests[(path, index)] = digest
        self.bytes_received += len(block)
        self.progress(self.bytes_received, self.manifest.total_size, f"chunk {index} of {path}")
        return Added.STORED

    def finish(self) -> None:
        """Check completeness, then each file's size and sha256 (files fsynced)."""
        missing = self.missing()
        if missing:
            described = "; ".join(
                f"{p}: {len(ix)} of {self.expected[p]} missing (first {ix[:5]})"
                for p, ix in missing.items()
            )
            raise OtaError(
                f"inline push {self.manifest.name} v{self.manifest.version} is incomplete: "
                f"{described}",
                reason=OtaReason.INCOMPLETE,
                fix="publish the same push again (the signed manifest and its chunks: a "
                "failed transfer may be retried); consider --url for large bundles",
            )
        for entry in self.manifest.files:
            self._check_file(entry)

    def _check_file(self, entry: FileEntry) -> None:
        path = self.staging / entry.path
        size = path.stat().st_size
        if size != entry.size:
            raise OtaRejected(
                f"file {entry.path}: assembled {size} bytes, the manifest says {entry.size} bytes",
                reason=OtaReason.SIZE_MISMATCH,
                fix="publish the chunks `edge-agent push --inline` produced, unchanged",
            )
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
            os.fsync(handle.fileno())
        if digest.hexdigest() != entry.sha256:
            raise OtaRejected(
                f"file {entry.path}: sha256 {digest.hexdigest()} differs from the manifest's "
                f"{entry.sha256}",
                reason=OtaReason.HASH_MISMATCH,
                fix="a chunk was altered in transit (or forged); publish the same push again "
                "(a failed transfer may be retried)",
            )
