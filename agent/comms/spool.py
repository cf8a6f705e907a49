"""Crash-safe on-disk store-and-forward queue for QoS 1 messages.

Every metrics/event message is appended here *before* it is published, and leaves only when
the broker acknowledged it (PUBACK → :meth:`Spool.ack`). Layout under ``<dir>``:

* ``seg-<first id>.log`` — append-only segments of records framed as
  ``<u32 length><u32 crc32(body)>`` + body, body = ``<u64 id><u8 qos><u8 retain><u16 topic len>
  topic payload``. A torn or corrupt record ends the segment on load (the tail is cut off).
* ``meta.json`` — ``acked_below`` (every id below it is acknowledged) and ``next_id``.

Ids are the message sequence numbers (``seq`` in the payloads), monotonic across restarts.
Writes reach the OS on every append (a process crash loses nothing); ``fsync`` happens on a
batch boundary (:meth:`maybe_sync`), so a power cut loses at most the last batch window.
When the files exceed ``max_bytes`` the oldest segment is deleted and its unacknowledged
records are counted in ``dropped``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.core.fsutil import atomic_write_json, fsync_dir
from agent.core.logs import log_fields

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<QBBH")
_MAX_RECORD = 64 << 20


@dataclass(frozen=True)
class Record:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class _Segment:
    first_id: int
    path: Path
    last_id: int
    size: int


def _encode(rec: Record) -> bytes:
    topic = rec.topic.encode()
    body = _HEAD.pack(rec.id, rec.qos, int(rec.retain), len(topic)) + topic + rec.payload
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _read_record(handle: BinaryIO) -> tuple[Record | None, int]:
    """Next record and its framed size; (None, 0) at a clean end, torn or corrupt data."""
    frame = handle.read(_FRAME.size)
    if len(frame) < _FRAME.size:
        return None, 0
    length, crc = _FRAME.unpack(frame)
    if length < _HEAD.size or length > _MAX_RECORD:
        return None, 0
    body = handle.read(length)
    if len(body) < length or zlib.crc32(body) != crc:
        return None, 0
    rid, qos, retain, tlen = _HEAD.unpack_from(body)
    topic = body[_HEAD.size : _HEAD.size + tlen].decode(errors="replace")
    payload = bytes(body[_HEAD.size + tlen :])
    return Record(rid, topic, payload, qos, bool(retain)), _FRAME.size + length


class Spool:
    """Bounded, ordered, persistent queue; thread-safe. Call :meth:`close` when done."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        sync_interval_s: float = 0.2,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max(4096, int(max_bytes))
        self.segment_bytes = segment_bytes or max(4096, min(1 << 20, self.max_bytes // 8))
        self.sync_interval_s = sync_interval_s
        self._lock = threading.Lock()
        self._meta_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._acked_below = 1
        self._acked: set[int] = set()
        self._next_id = 1
        self._writer: BinaryIO | None = None
        self._reader: BinaryIO | None = None
        self._reader_pos: tuple[int, int, int] | None = None  # (segment first id, offset, next id)
        self._dirty = False
        self._meta_dirty = False
        self._last_sync = time.monotonic()
        self.dropped = 0
        self.corrupt = 0
        self.appended = 0
        self._load()

    # ------------------------------------------------------------------ load

    def _load(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "meta.json"
        meta: dict[str, int] = {}
        if meta_path.exists():
            try:
                raw = json.loads(meta_path.read_text())
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
                meta = {k: int(v) for k, v in raw.items() if isinstance(v, int)}
            except (OSError, ValueError) as err:
                # Every record on disk counts as unsent: duplicates (dedupe on seq), no loss.
                log.warning(
                    "spool meta %s unreadable (%s); resending every stored record",
                    meta_path, err, extra=log_fields(path=str(meta_path), error=str(err)),
                )  # fmt: skip
        self._acked_below = max(1, meta.get("acked_below", 1))
        next_id = max(self._acked_below, meta.get("next_id", 1))
        paths = sorted(self.dir.glob("seg-*.log"), key=lambda p: int(p.stem[4:] or 0))
        for index, path in enumerate(paths):
            last_id, good, count = 0, 0, 0
            with open(path, "rb") as handle:
                while True:
                    rec, size = _read_record(handle)
                    if rec is None:
                        break
                    last_id, good, count = rec.id, good + size, count + 1
                total = handle.seek(0, os.SEEK_END)
            if good < total:
                self.corrupt += 1
                log.warning(
                    "spool segment has a torn or corrupt tail; cutting it off",
                    extra=log_fields(path=str(path), kept_bytes=good, lost_bytes=total - good),
                )
                with open(path, "r+b") as handle:
                    handle.truncate(good)
                    os.fsync(handle.fileno())
            if count == 0:
                path.unlink(missing_ok=True)
                continue
            first = int(path.stem[4:])
            if index + 1 < len(paths):  # ids missing before the next segment: count as acked
                self._acked.update(range(last_id + 1, int(paths[index + 1].stem[4:])))
            self._segments.append(_Segment(first, path, last_id, good))
            next_id = max(next_id, last_id + 1)
        self._next_id = next_id
        # Ids with no record on disk (deleted segments, a cut tail) count as delivered.
        if self._segments:
            self._acked.update(range(self._acked_below, self._segments[0].first_id))
            self._acked.update(range(self._segments[-1].last_id + 1, next_id))
        else:
            self._acked_below = next_id
        self._advance()
        self._drop_acked_segments()
        if self.pending:
            log.info(
                "spool loaded",
                extra=log_fields(pending=self.pending, next_id=self._next_id, dir=str(self.dir)),
            )

    # ------------------------------------------------------------------ write

    def append(
        self,
        topic: str,
        make_payload: Callable[[int], bytes],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> int:
        """Reserve the next id, build the payload with it and store the record; returns the id."""
        with self._lock:
            rid = self._next_id
            data = _encode(Record(rid, topic, make_payload(rid), qos, retain))
            while self._segments and self.total_bytes + len(data) > self.max_bytes:
                if not self._drop_oldest():
                    break
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.size >= self.segment_bytes or self._writer is None:
                seg = self._roll(rid)
            assert self._writer is not None
            self._writer.write(data)
            self._writer.flush()
            seg.size += len(data)
            seg.last_id = rid
            self._next_id = rid + 1
            self._dirty = self._meta_dirty = True
            self.appended += 1
            return rid

    def _roll(self, first_id: int) -> _Segment:
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
        path = self.dir / f"seg-{first_id:016d}.log"
        self._writer = open(path, "ab")  # noqa: SIM115 - kept open across calls
        fsync_dir(self.dir)
        seg = _Segment(first_id, path, first_id - 1, 0)
        self._segments.append(seg)
        return seg

    def _drop_oldest(self) -> bool:
        if len(self._segments) == 1 and self._writer is not None:
            self._writer.close()
            self._writer = None
        seg = self._segments.pop(0)
        lost = sum(
            1
            for i in range(max(seg.first_id, self._acked_below), seg.last_id + 1)
            if i not in self._acked
        )
        self.dropped += lost
        seg.path.unlink(missing_ok=True)
        self._acked = {i for i in self._acked if i > seg.last_id}
        self._acked_below = max(self._acked_below, seg.last_id + 1)
        self._advance()
        self._meta_dirty = True
        if self._reader_pos is not None and self._reader_pos[0] == seg.first_id:
            self._close_reader()
        if lost:
            log.warning(
                "spool full; dropped the oldest messages",
                extra=log_fields(
                    dropped=lost, total_dropped=self.dropped, max_bytes=self.max_bytes
                ),
            )
        return True

    # ------------------------------------------------------------------ read / ack

    def read(self, start_id: int, limit: int) -> list[Record]:
        """Up to ``limit`` unacknowledged records with id >= ``start_id``, in id order."""
        out: list[Record] = []
        with self._lock:
            start_id = max(start_id, self._acked_below)
            while len(out) < limit and start_id < self._next_id:
                seg = self._segment_for(start_id)
                if seg is None:
                    break
                if (
                    self._reader_pos is None
                    or self._reader_pos[0] != seg.first_id
                    or (self._reader_pos[2] != start_id)
                ):
                    self._open_reader(seg)
                assert self._reader is not None and self._reader_pos is not None
                self._reader.seek(self._reader_pos[1])
                progressed = False
                while len(out) < limit:
                    rec, size = _read_record(self._reader)
                    if rec is None:
                        break
                    progressed = True
                    self._reader_pos = (seg.first_id, self._reader_pos[1] + size, rec.id + 1)
                    if rec.id >= start_id and rec.id not in self._acked:
                        out.append(rec)
                    start_id = max(start_id, rec.id + 1)
                if not progressed or (len(out) < limit and start_id <= seg.last_id):
                    if start_id <= seg.last_id:  # unreadable middle: skip the rest
                        start_id = seg.last_id + 1
                    continue
        return out

    def _segment_for(self, rid: int) -> _Segment | None:
        found = None
        for seg in self._segments:
            if seg.first_id <= rid:
                found = seg
            else:
                break
        if found is not None and rid > found.last_id:
            later = [s for s in self._segments if s.first_id > rid]
            return later[0] if later else None
        if found is None and self._segments:
            return self._segments[0]
        return found

    def _open_reader(self, seg: _Segment) -> None:
        self._close_reader()
        self._reader = open(seg.path, "rb")  # noqa: SIM115 - kept open across calls
        self._reader_pos = (seg.first_id, 0, seg.first_id)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._reader_pos = None

    def ack(self, rid: int) -> None:
        """Mark one record delivered (no I/O; segments go on the next :meth:`maybe_sync`)."""
        with self._lock:
            if rid < self._acked_below or rid >= self._next_id:
                return
            self._acked.add(rid)
            self._advance()
            self._meta_dirty = True

    def _advance(self) -> None:
        while self._acked_below in self._acked:
            self._acked.discard(self._acked_below)
            self._acked_below += 1
        if self._acked_below >= self._next_id:
            self._acked.clear()

    def _drop_acked_segments(self) -> None:
        keep: list[_Segment] = []
        for seg in self._segments:
            active = seg is self._segments[-1] and self._writer is not None
            if seg.last_id < self._acked_below and not active:
                if self._reader_pos is not None and self._reader_pos[0] == seg.first_id:
                    self._close_reader()
                seg.path.unlink(missing_ok=True)
            else:
                keep.append(seg)
        self._segments = keep

    # ------------------------------------------------------------------ durability

    def maybe_sync(self, *, force: bool = False) -> None:
        """fsync the active segment and persist the ack mark if a batch window passed.

        The fsync and the meta write run outside the lock, so appends never wait for the disk.
        """
        with self._lock:
            if not (self._dirty or self._meta_dirty):
                return
            if not force and time.monotonic() - self._last_sync < self.sync_interval_s:
                return
            fd = -1
            if self._dirty and self._writer is not None:
                self._writer.flush()
                fd = os.dup(self._writer.fileno())
            meta = None
            if self._meta_dirty:
                active = self._segments[-1] if self._segments else None
                if (
                    active is not None
                    and self._writer is not None
                    and active.last_id < self._acked_below
                    and active.size >= self.segment_bytes // 4
                ):
                    self._writer.close()  # fully delivered: start afresh next append
                    self._writer = None
                self._drop_acked_segments()
                meta = {"acked_below": self._acked_below, "next_id": self._next_id}
            self._dirty = self._meta_dirty = False
            self._last_sync = time.monotonic()
        if fd >= 0:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if meta is not None:
            with self._meta_lock:
                atomic_write_json(self.dir / "meta.json", meta)

    def close(self) -> None:
        """Sync and close the files (idempotent)."""
        self.maybe_sync(force=True)
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._close_reader()

    # ------------------------------------------------------------------ figures

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def pending(self) -> int:
        """Records stored and not yet acknowledged."""
        return max(0, self._next_id - self._acked_below - len(self._acked))

    @property
    def acked_below(self) -> int:
        return self._acked_below

    @property
    def next_id(self) -> int:
        return self._next_id
