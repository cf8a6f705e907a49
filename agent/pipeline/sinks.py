"""Where results go: console/log lines, JSONL files, annotated JPEG snapshots, fan-out.

Every sink has ``write(result)`` and ``close()``. The pool calls ``write`` from its single
delivery thread, so a sink needs no locking of its own for that path; the sinks here take a
lock anyway so a daemon may also call ``close`` from another thread. The MQTT sink lives with the
MQTT client (``comms``), not here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np

from agent.pipeline.frames import Result
from agent.vision.jpeg import encode_jpeg
from agent.vision.overlay import draw_overlay

__all__ = ["ConsoleSink", "FanoutSink", "JsonlSink", "Sink", "SnapshotSink", "draw_result"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@runtime_checkable
class Sink(Protocol):
    def write(self, result: Result) -> None: ...

    def close(self) -> None: ...


def _error_of(result: Result) -> str | None:
    raw = result.raw
    if raw is not None and isinstance(raw.get("error"), str):
        return str(raw["error"])
    return None


def _compact(result: Result) -> str:
    head = f"{result.source}#{result.index}"
    total = result.timings_ms.get("total")
    tail = f" {total:.1f}ms" if total is not None else ""
    error = _error_of(result)
    if error is not None:
        return f"{head} ERROR {error}{tail}"
    if result.detections:
        dets = ",".join(f"{d.label}:{d.score:.2f}" for d in result.detections[:5])
        more = f"+{len(result.detections) - 5}" if len(result.detections) > 5 else ""
        return f"{head} det={len(result.detections)} {dets}{more}{tail}"
    if result.top_k:
        label, score = result.top_k[0]
        return f"{head} top={label}:{score:.2f}{tail}"
    return f"{head} -{tail}"


class ConsoleSink:
    """One compact line per result, or with ``summary_every_s`` one summary line per period
    (results, fps, errors and mean latency per source). ``stream=None`` writes through the
    ``logging`` module (JSON lines in the daemon), otherwise plain text to the stream."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        summary_every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._stream = stream
        self._every = summary_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._counts: dict[str, list[float]] = {}  # source -> [results, errors, sum total ms]

    def _emit(self, line: str, fields: dict[str, Any] | None = None) -> None:
        if self._stream is None:
            log.info(line, extra={"fields": fields or {}})
        else:
            self._stream.write(line + "\n")
            self._stream.flush()

    def write(self, result: Result) -> None:
        with self._lock:
            if self._every is None:
                self._emit(_compact(result), {"source": result.source, "index": result.index})
                return
            c = self._counts.setdefault(result.source, [0.0, 0.0, 0.0])
            c[0] += 1
            c[1] += 1 if _error_of(result) is not None else 0
            c[2] += result.timings_ms.get("total", 0.0)
            if self._clock() - self._t0 >= self._every:
                self._summary()

    def _summary(self) -> None:
        now = self._clock()
        span = max(1e-9, now - self._t0)
        parts: list[str] = []
        fields: dict[str, Any] = {}
        for src in sorted(self._counts):
            n, err, total = self._counts[src]
            mean = total / n if n else 0.0
            parts.append(f"{src}: {n / span:.1f} fps, {int(err)} err, {mean:.1f} ms")
            fields[src] = {"fps": round(n / span, 2), "errors": int(err), "mean_ms": round(mean, 2)}
        if parts:
            self._emit(f"[{span:.0f}s] " + "; ".join(parts), {"summary": fields})
        self._counts.clear()
        self._t0 = now

    def close(self) -> None:
        with self._lock:
            if self._every is not None:
                self._summary()


class JsonlSink:
    """Appends ``Result.to_json()`` (plus ``error`` for error results) as one JSON line each.

    Each line is flushed to the kernel at once, so a crash of the agent loses nothing and a
    ``tail -f`` sees results live, but it is not fsynced: on a Jetson the file sits on eMMC, an
    SD card or NVMe, and an fsync per result (tens per second) forces a flash program per line,
    multiplies write amplification and wears the cells out in months, and stalls the delivery
    thread on every write. Results are telemetry, not state: losing the last few seconds at a power
    cut (the kernel writes dirty pages back within ~30 s) is the right trade.

    When the file would grow past ``max_bytes`` it is rotated: ``path`` → ``path.1`` → … →
    ``path.<backups>`` (the oldest is removed).
    """

    def __init__(self, path: Path | str, *, max_bytes: int = 16 << 20, backups: int = 3):
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = max(0, int(backups))
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open across writes
        self._size = self._file.tell()

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write(self, result: Result) -> None:
        data = result.to_json()
        error = _error_of(result)
        if error is not None:
            data["error"] = error
        line = (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._file is None:
                raise ValueError(f"{self.path}: the sink is closed")
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def draw_result(image: np.ndarray, result: Result) -> np.ndarray:
    """A copy of the BGR ``image`` with the result's boxes, labels and top-k drawn on it."""
    return draw_overlay(image, result.detections, result.top_k)


class SnapshotSink:
    """Every ``every_s`` seconds per source, the result's frame with its boxes drawn, as
    ``<source>-<index>-<wall ms>.jpg`` in ``directory``; only the newest ``max_files`` stay.

    The JPEG is written to a hidden temporary file in the same directory and renamed over its
    name, so a reader (a web page, an uploader) never sees half a file. No fsync: a snapshot is a
    preview, and syncing each would cost flash wear for nothing. Results without ``frame``
    (postprocess keeps it only when asked) are skipped.
    """

    def __init__(
        self,
        directory: Path | str,
        every_s: float = 5.0,
        max_files: int = 20,
        *,
        quality: int = 85,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.directory = Path(directory)
        self.every_s = float(every_s)
        self.max_files = int(max_files)
        self.quality = int(quality)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._warned_no_frame = False
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".tmp-*.jpg"):
            with contextlib.suppress(OSError):
                stale.unlink()
        # oldest first; files written by this sink are appended in write order
        existing: list[tuple[int, str, Path]] = []
        for p in self.directory.glob("*.jpg"):
            with contextlib.suppress(OSError):
                existing.append((p.stat().st_mtime_ns, p.name, p))
        self._files: deque[Path] = deque(p for _, _, p in sorted(existing))
        self._prune()

    def write(self, result: Result) -> None:
        if result.frame is None:
            if not self._warned_no_frame:
                self._warned_no_frame = True
                log.warning("snapshot sink: results carry no frame; keep frames for this sink")
            return
        with self._lock:
            now = self._clock()
            last = self._last.get(result.source)
            if last is not None and now - last < self.every_s:
                return
            self._last[result.source] = now
            path = self._write(result, result.frame)
            if path in self._files:
                self._files.remove(path)
            self._files.append(path)
            self._prune()

    def _write(self, result: Result, frame: np.ndarray) -> Path:
        image = draw_result(frame, result)
        data = encode_jpeg(image, self.quality)
        if data is None:
            raise ValueError(f"cannot encode a {image.shape} frame as JPEG")
        source = _SAFE.sub("_", result.source).strip("_") or "source"
        name = f"{source}-{result.index:08d}-{int(result.wall_time * 1000)}.jpg"
        target = self.directory / name
        tmp = self.directory / f".tmp-{name}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return target

    def _prune(self) -> None:
        while len(self._files) > self.max_files:
            with contextlib.suppress(OSError):
                self._files.popleft().unlink()

    def close(self) -> None:
        """Nothing to release: every snapshot is written and closed as it is taken."""


class FanoutSink:
    """Writes each result to every sink; one sink's exception is logged (the first and then
    every 100th of a sink's write failures; every close failure) and counted, and never stops
    the others."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks: list[Sink] = list(sinks)
        self.failures: dict[int, int] = {}

    def _failed(self, i: int, what: str, *, always: bool = False) -> None:
        n = self.failures.get(i, 0) + 1
        self.failures[i] = n
        if always or n == 1 or n % 100 == 0:
            log.exception("sink %s failed on %s (%d times)", type(self.sinks[i]).__name__, what, n)

    def write(self, result: Result) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.write(result)
            except Exception:
                self._failed(i, "write")

    def close(self) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.close()
            except Exception:
                self._failed(i, "close", always=True)
