"""Getting a bundle's bytes: downloads (http, https, file) and inline MQTT chunks.

Every file lands in a staging directory, is read at most ``size + 1`` bytes (so a server that
sends more is cut off and refused with ``size_mismatch``), and is hashed while it streams; a
file whose size or sha256 differs from the manifest is refused and removed. One deadline covers
name lookup, connect, TLS, headers and body of a download (:mod:`agent.ota.httpget`), so a slow
or trickling server fails it with ``download_timeout`` instead of holding the updater thread.
Nothing here moves files out of staging: :mod:`agent.ota.store` does that once every file
checked out.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from agent.core.errors import OtaError, OtaReason, OtaRejected
from agent.core.logs import log_fields
from agent.core.redact import redact_text
from agent.ota.httpget import Deadline, http_get
from agent.ota.manifest import FileEntry, Manifest

__all__ = [
    "DownloadProgress",
    "download_budget_s",
    "download_bundle",
    "download_file",
    "file_url",
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


def download_budget_s(size: int, timeout_s: float) -> float:
    """Seconds a download of ``size`` bytes may take in all (lookup, connect, TLS, headers and
    body): ``timeout_s`` plus the time the bytes take at :data:`MIN_RATE_BYTES_S`."""
    return timeout_s + size / MIN_RATE_BYTES_S


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
    (with ``deadline``, a ``time.monotonic()`` value) finished by then, else TimeoutError."""
    digest = hashlib.sha256()
    received = 0
    limit = entry.size + 1
    # read1 returns what has arrived (read(n) would wait for all n bytes, past the deadline)
    read = getattr(source, "read1", None) or source.read
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        while received < limit:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{received} of {entry.size} bytes by the deadline")
            try:
                block = read(min(_CHUNK, limit - received))
            except TimeoutError as exc:
                raise TimeoutError(f"{received} of {entry.size} bytes by the deadline") from exc
            if not block:
                break
            received += len(block)
            if received > entry.size:
                break
            digest.update(block)
            out.write(block)
            progress(done_before + received, total, f"downloading {entry.path}")
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


def _open_source(
    url: str, deadline: float, tls: ssl.SSLContext | None
) -> AbstractContextManager[Any]:
    if urllib.parse.urlsplit(url).scheme == "file":
        return urllib.request.urlopen(url)  # a local file: the deadline is checked per block
    return http_get(url, Deadline(deadline), tls=tls)


def _timed_out(url: str, entry: FileEntry, budget_s: float, exc: TimeoutError) -> OtaError:
    return OtaError(
        redact_text(
            f"download of {entry.path} from {url} too slow: not complete by its deadline "
            f"({budget_s:.1f} s for name lookup, connect, TLS, headers and body together; "
            f"{exc})"
        ),
        reason=OtaReason.DOWNLOAD_TIMEOUT,
        fix=f"serve the bundle from a host the device reaches at a usable rate (at least "
        f"{MIN_RATE_BYTES_S // 1024} KiB/s on average) or raise ota.download_timeout_s, "
        "then push again",
    )


def download_file(
    url: str,
    entry: FileEntry,
    dest: Path,
    *,
    timeout_s: float = 60.0,
    progress: DownloadProgress = _no_progress,
    done_before: int = 0,
    total: int | None = None,
    deadline: float | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Download ``url`` to ``dest`` checking size and sha256 against ``entry``. Everything
    ends by ``deadline`` (``time.monotonic()``; default: :func:`download_budget_s` from now),
    else ``download_timeout``; ``tls`` verifies https (default: the system trust store)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise OtaRejected(
            redact_text(f"URL scheme {scheme!r} is not allowed ({url})"),
            reason=OtaReason.MALFORMED,
            fix="serve bundles over https (or http on a trusted network, or file://)",
        )
    total = entry.size if total is None else total
    started = time.monotonic()
    if deadline is None:
        deadline = started + download_budget_s(entry.size, timeout_s)
    try:
        with _open_source(url, deadline, tls) as source:
            length = source.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > entry.size:
                raise _size_mismatch(entry, f"the server announces {length} bytes")
            _write_checked(
                source,
                entry,
                dest,
                progress=progress,
                done_before=done_before,
                total=total,
                deadline=deadline,
            )
    except OtaError:
        raise
    except TimeoutError as exc:
        dest.unlink(missing_ok=True)
        raise _timed_out(url, entry, deadline - started, exc) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, SSLError too
        dest.unlink(missing_ok=True)
        raise OtaError(
            redact_text(f"download of {entry.path} from {url} failed: {exc}"),
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
    tls: ssl.SSLContext | None = None,
) -> None:
    """Download every file of a ``url`` payload into ``staging`` (checked), all of them by one
    deadline: :func:`download_budget_s` of the bundle's size from now."""
    base = manifest.payload.base_url
    if manifest.payload.kind != "url" or base is None:
        raise OtaError(
            "download_bundle needs a url payload",
            reason=OtaReason.INTERNAL,
            fix="use ChunkAssembler for inline payloads",
        )
    total = manifest.total_size
    deadline = time.monotonic() + download_budget_s(total, timeout_s)
    done = 0
    for entry in manifest.files:
        download_file(
            file_url(base, entry.path),
            entry,
            staging / entry.path,
            progress=progress,
            done_before=done,
            total=total,
            deadline=deadline,
            tls=tls,
        )
        done += entry.size
    progress(total, total, "download complete")
    log.info(
        "bundle downloaded",
        extra=log_fields(model=manifest.name, version=manifest.version, bytes=total),
    )
