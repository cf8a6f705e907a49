"""Getting a bundle's bytes: downloads (http, https, file) and inline MQTT chunks.

Every file lands in a staging directory, is read at most ``size + 1`` bytes (so a server that
sends more is cut off and refused with ``size_mismatch``), and is hashed while it streams; a
file whose size or sha256 differs from the manifest is refused and removed. Nothing here moves
files out of staging: :mod:`agent.ota.store` does that once every file checked out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.core.errors import OtaError, OtaReason, OtaRejected
from agent.core.logs import log_fields
from agent.ota.manifest import CHUNK_KIND, FileEntry, Manifest

__all__ = [
    "ChunkAssembler",
    "DownloadProgress",
    "download_bundle",
    "download_file",
    "file_url",
    "is_chunk_message",
]

log = logging.getLogger(__name__)

#: ``progress(done_bytes, total_bytes, message)``
DownloadProgress = Callable[[int, int, str], None]
_CHUNK = 1 << 16
#: the slowest average rate a download may keep: a server (or a man in the middle) trickling
#: bytes just under the per-read timeout must not hold the single updater thread for ever
MIN_RATE_BYTES_S = 64 * 1024
_SCHEMES = ("http", "https", "file")


def _no_progress(done: int, total: int, message: str) -> None:
    del done, total, message


def file_url(base_url: str, path: str) -> str:
    """URL of bundle file ``path`` under ``base_url`` (path components percent-quoted)."""
    return base_url.rstrip("/") + "/" + urllib.parse.quote(path)


def _size_mismatch(entry: FileEntry, got: str) -> OtaRejected:
    return OtaRejected(
        f"file {entry.path}: {got}, the manifest says {entry.size} bytes",
        reason=OtaReason.SIZE_MISMATCH,
        fix="serve exactly the files the manifest was made from (re-run `edge-agent push`)",
    )


def _hash_mismatch(entry: FileEntry, got: str) -> OtaRejected:
    return OtaRejected(
        f"file {entry.path}: sha256 {got} differs from the manifest's {entry.sha256}",
        reason=OtaReason.HASH_MISMATCH,
        fix="the file changed or was corrupted after signing; re-run `edge-agent push` from "
        "the bundle you mean to ship",
    )


def _write_checked(
    source: Any,
    entry: FileEntry,
    dest: Path,
    *,
    progress: DownloadProgress,
    done_before: int,
    total: int,
    deadline: float | None = None,
) -> int:
    """Stream ``source`` (has .read(n)) to ``dest``: at most size+1 bytes read, hashed, and
    (with ``deadline``, a ``time.monotonic()`` value) finished by then."""
    digest = hashlib.sha256()
    received = 0
    limit = entry.size + 1
    # read1 returns what has arrived (read(n) would wait for all n bytes, past the deadline)
    read = getattr(source, "read1", None) or source.read
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        while received < limit:
            block = read(min(_CHUNK, limit - received))
            if not block:
                break
            received += len(block)
            if received > entry.size:
                break
            digest.update(block)
            out.write(block)
            progress(done_before + received, total, f"downloading {entry.path}")
            if deadline is not None and time.monotonic() > deadline and received < entry.size:
                out.close()
                dest.unlink(missing_ok=True)
                raise OtaError(
                    f"download of {entry.path} too slow: {received} of {entry.size} bytes "
                    f"by the deadline (at least {MIN_RATE_BYTES_S // 1024} KiB/s on average)",
                    reason=OtaReason.FETCH_FAILED,
                    fix="serve the bundle from a host the device reaches at a usable rate, "
                    "then push again",
                )
        out.flush()
        os.fsync(out.fileno())
    if received > entry.size:
        dest.unlink(missing_ok=True)
        raise _size_mismatch(entry, "the source has more bytes")
    if received != entry.size:
        dest.unlink(missing_ok=True)
        raise _size_mismatch(entry, f"got {received} bytes")
    got = digest.hexdigest()
    if got != entry.sha256:
        dest.unlink(missing_ok=True)
        raise _hash_mismatch(entry, got)
    return received


def download_file(
    url: str,
    entry: FileEntry,
    dest: Path,
    *,
    timeout_s: float = 60.0,
    progress: DownloadProgress = _no_progress,
    done_before: int = 0,
    total: int | None = None,
) -> None:
    """Download ``url`` to ``dest`` checking size and sha256 against ``entry``."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise OtaRejected(
            f"URL scheme {scheme!r} is not allowed ({url})",
            reason=OtaReason.MALFORMED,
            fix="serve bundles over https (or http on a trusted network, or file://)",
        )
    total = entry.size if total is None else total
    deadline = time.monotonic() + timeout_s + entry.size / MIN_RATE_BYTES_S
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > entry.size:
                raise _size_mismatch(entry, f"the server announces {length} bytes")
            _write_checked(
                response,
                entry,
                dest,
                progress=progress,
                done_before=done_before,
                total=total,
                deadline=deadline,
            )
    except (OtaRejected, OtaError):
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise OtaError(
            f"download of {entry.path} from {url} failed: {exc}",
            reason=OtaReason.FETCH_FAILED,
            fix="check that the URL is reachable from the device and the server is up, "
            "then push again",
        ) from exc


def download_bundle(
    manifest: Manifest,
    staging: Path,
    *,
    timeout_s: float = 60.0,
    progress: DownloadProgress = _no_progress,
) -> None:
    """Download every file of a ``url`` payload into ``staging`` (checked)."""
    base = manifest.payload.base_url
    if manifest.payload.kind != "url" or base is None:
        raise OtaError(
            "download_bundle needs a url payload",
            reason=OtaReason.INTERNAL,
            fix="use ChunkAssembler for inline payloads",
        )
    total = manifest.total_size
    done = 0
    for entry in manifest.files:
        download_file(
            file_url(base, entry.path),
            entry,
            staging / entry.path,
            timeout_s=timeout_s,
            progress=progress,
            done_before=done,
            total=total,
        )
        done += entry.size
    progress(total, total, "download complete")
    log.info(
        "bundle downloaded",
        extra=log_fields(model=manifest.name, version=manifest.version, bytes=total),
    )


def is_chunk_message(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind") == CHUNK_KIND


class ChunkAssembler:
    """Assembles an inline push from chunk messages, in any order, duplicates tolerated.

    A chunk message: ``{"kind": "chunk", "manifest_sha256": ..., "file": path, "index": i,
    "count": n, "data": base64}``. Each chunk is written at ``index * chunk_size`` of its
    staging file; :meth:`finish` checks that nothing is missing, then sizes and hashes.
    """

    def __init__(
        self,
        manifest: Manifest,
        manifest_sha: str,
        staging: Path,
        *,
        progress: DownloadProgress = _no_progress,
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
        self.expected = {f.path: manifest.payload.chunk_count(f.size) for f in manifest.files}
        self.received: dict[str, set[int]] = {p: set() for p in self.expected}
        self.digests: dict[tuple[str, int], str] = {}
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

    def _bad(self, message: str) -> OtaRejected:
        return OtaRejected(
            f"inline chunk for {self.manifest.name} v{self.manifest.version}: {message}",
            reason=OtaReason.MALFORMED,
            fix="publish the chunks `edge-agent push --inline` produced, unchanged",
        )

    def add(self, msg: Mapping[str, Any]) -> bool:
        """Take one chunk message; True when every chunk has arrived.

        A chunk for another push is refused with ``malformed``; a duplicate with the same
        bytes is ignored, one with different bytes is refused (``hash_mismatch``)."""
        if msg.get("manifest_sha256") != self.sha:
            raise self._bad("it belongs to another manifest")
        path, index, count, data = (
            msg.get("file"),
            msg.get("index"),
            msg.get("count"),
            msg.get("data"),
        )
        if not isinstance(path, str) or path not in self.expected:
            raise self._bad(f"file {path!r} is not in the manifest")
        n = self.expected[path]
        if not isinstance(count, int) or count != n:
            raise self._bad(f"file {path}: count {count!r}, expected {n}")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise self._bad(f"file {path}: index {index!r} outside 0..{n - 1}")
        if not isinstance(data, str):
            raise self._bad(f"file {path} chunk {index}: data is not a base64 string")
        try:
            block = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._bad(f"file {path} chunk {index}: data is not base64") from exc
        entry = self.manifest.file(path)
        start = index * self.chunk_size
        want = min(self.chunk_size, entry.size - start) if entry.size else 0
        if len(block) != want:
            raise OtaRejected(
                f"inline chunk {index} of {path} has {len(block)} bytes, expected {want}",
                reason=OtaReason.SIZE_MISMATCH,
                fix="publish the chunks `edge-agent push --inline` produced, unchanged",
            )
        digest = hashlib.sha256(block).hexdigest()
        if index in self.received[path]:
            if self.digests[(path, index)] != digest:
                raise OtaRejected(
                    f"chunk {index} of {path} arrived twice with different bytes",
                    reason=OtaReason.HASH_MISMATCH,
                    fix="push again; something altered chunks in transit",
                )
            return self.complete
        with (self.staging / path).open("r+b") as handle:
            handle.seek(start)
            handle.write(block)
        self.received[path].add(index)
        self.digests[(path, index)] = digest
        self.bytes_received += len(block)
        self.progress(self.bytes_received, self.manifest.total_size, f"chunk {index} of {path}")
        return self.complete

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
                fix="publish the push again with a new version (a lost chunk cannot be "
                "re-requested); consider --url for large bundles",
            )
        for entry in self.manifest.files:
            path = self.staging / entry.path
            size = path.stat().st_size
            if size != entry.size:
                raise _size_mismatch(entry, f"assembled {size} bytes")
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                os.fsync(handle.fileno())
            if digest.hexdigest() != entry.sha256:
                raise _hash_mismatch(entry, digest.hexdigest())
