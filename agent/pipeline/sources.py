"""Camera and video sources: each one a state machine with a decode thread and a bounded queue.

A :class:`Source` opens its capture on its own thread, decodes frames, validates them (BGR uint8
H×W×3; gray and BGRA are converted, anything else is dropped with one status event) and puts
them into a :class:`FrameQueue` whose :class:`DropPolicy` is named: ``NEWEST_WINS`` for live
sources (the oldest queued frame is dropped and counted), ``BLOCK`` for files and image folders
(the decoder waits for the consumer; nothing is lost).

States and the transitions allowed between them (anything else is a bug)::

    IDLE ─► CONNECTING ─► STREAMING ─► STALLED ─► RECONNECTING ─► CONNECTING ...
                 │             ├──────────────────────▲ (disconnect / read error)
                 │             └─► ENDED (end of a file that does not loop)
                 └─► RECONNECTING (open failed)        any live state ─► FAILED | STOPPED

A stall (no frame for ``stall_timeout_s``) or a disconnect releases the capture, waits a
:class:`Backoff` delay (exponential, jittered) and reopens; after ``max_attempts`` failed
reconnects in a row (``None`` = forever, the default for live sources) the source is FAILED.
Nothing raises out of the decode thread, and a status callback that raises is logged, not fatal.
Every URI and reason in a log record or a :class:`SourceStatus` goes through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import random
import re
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import cv2
import numpy as np

from agent.config.schema import SourceConfig
from agent.core.errors import SourceError
from agent.core.logs import log_fields
from agent.pipeline.frames import Frame
from agent.vision.synthetic import SceneAnimator

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

# --------------------------------------------------------------------------- redaction

# userinfo runs to the last "@" before the host (passwords may hold a raw "@")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#\"']*@")
_GST_SECRET = re.compile(
    r"(?P<key>\b(?:user-id|user-pw|proxy-id|proxy-pw|password|passwd))(?P<eq>\s*=\s*)"
    r"(?P<val>\"[^\"]*\"|'[^']*'|[^\s!]+)"
)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:user|username|password|passwd|pwd|pass|token|auth|key|api_key|apikey)=)"
    r"[^&\s!\"'#]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Remove credentials from a URL, a GStreamer pipeline or a message that contains one.

    ``rtsp://user:pw@host/x`` → ``rtsp://***@host/x``; ``user-id=a user-pw=b`` →
    ``user-id=*** user-pw=***``; ``?user=a&password=b`` → ``?user=***&password=***``.
    """
    out = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    out = _GST_SECRET.sub(r"\g<key>\g<eq>***", out)
    return _QUERY_SECRET.sub(r"\g<key>***", out)


# --------------------------------------------------------------------------- state machine


class SourceState(str, enum.Enum):
    IDLE = "idle"  # built, not started
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a file or folder reached its end (terminal)
    FAILED = "failed"  # gave up, or can never work here (terminal)
    STOPPED = "stopped"  # stop() was called (terminal)


_S = SourceState
TERMINAL: frozenset[SourceState] = frozenset({_S.ENDED, _S.FAILED, _S.STOPPED})
ALLOWED_TRANSITIONS: dict[SourceState, frozenset[SourceState]] = {
    _S.IDLE: frozenset({_S.CONNECTING, _S.FAILED, _S.STOPPED}),
    _S.CONNECTING: frozenset({_S.STREAMING, _S.RECONNECTING, _S.ENDED, _S.FAILED, _S.STOPPED}),
    _S.STREAMING: frozenset({_S.STALLED, _S.RECONNECTING, _S.ENDED, _S.FAILED, _S.STOPPED}),
    _S.STALLED: frozenset({_S.RECONNECTING, _S.STREAMING, _S.FAILED, _S.STOPPED}),
    _S.RECONNECTING: frozenset({_S.CONNECTING, _S.FAILED, _S.STOPPED}),
    _S.ENDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
}


class IllegalTransition(SourceError):
    """A source tried a state change the table does not allow: a bug in the source."""


def check_transition(old: SourceState, new: SourceState) -> None:
    """Raise :class:`IllegalTransition` unless ``old → new`` is in the table."""
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = ", ".join(s.value for s in ALLOWED_TRANSITIONS[old]) or "none (terminal)"
        raise IllegalTransition(
            f"illegal source state transition {old.value} → {new.value}",
            fix=f"this is a bug in the source; allowed from {old.value}: {allowed}",
        )


@dataclass(frozen=True)
class SourceStatus:
    """A typed status event. ``kind`` is ``"transition"`` (``old → new``) or ``"frame"``
    (a frame was rejected; ``old == new``). ``uri`` and ``reason`` are already redacted."""

    source: str
    old: SourceState
    new: SourceState
    reason: str
    uri: str
    attempt: int
    ts: float  # time.time()
    kind: Literal["transition", "frame"] = "transition"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "old": self.old.value,
            "new": self.new.value,
            "reason": self.reason,
            "uri": self.uri,
            "attempt": self.attempt,
            "ts": self.ts,
        }


class SourceStateMachine:
    """The state of one source, behind a lock. ``to()`` checks the transition table: an illegal
    transition raises when ``strict`` (tests, debugging) and otherwise is logged as an error
    and ignored (the daemon keeps running)."""

    def __init__(self, name: str, uri: str, *, strict: bool = False) -> None:
        self.name = name
        self.uri = redact(uri)
        self.strict = strict
        self._state = SourceState.IDLE
        self._lock = threading.Lock()

    @property
    def state(self) -> SourceState:
        return self._state

    def to(self, new: SourceState, reason: str, *, attempt: int = 0) -> SourceStatus | None:
        with self._lock:
            old = self._state
            try:
                check_transition(old, new)
            except IllegalTransition as exc:
                if self.strict:
                    raise
                logger.error(
                    "source %s: %s (%s)", self.name, exc.message, redact(reason),
                    extra=log_fields(source=self.name, old=old.value, new=new.value),
                )  # fmt: skip
                return None
            self._state = new
        return SourceStatus(
            source=self.name, old=old, new=new, reason=redact(reason), uri=self.uri,
            attempt=attempt, ts=time.time(),
        )  # fmt: skip


# --------------------------------------------------------------------------- queue


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


# --------------------------------------------------------------------------- backoff


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


class Backoff:
    """Reconnect delays: exponential ``base·factor^n`` capped at ``max_delay``, with jitter.

    ``jitter="full"``: uniform in [0, ceiling] (AWS "full jitter"); ``"decorrelated"``:
    ``min(max_delay, uniform(base, 3·previous))``; ``"none"``: the ceiling itself.
    ``reset()`` after a success. ``rng`` is injectable (anything with ``uniform``).
    """

    def __init__(
        self,
        base: float = 0.5,
        max_delay: float = 30.0,
        *,
        factor: float = 2.0,
        jitter: Literal["full", "decorrelated", "none"] = "full",
        rng: Rng | None = None,
    ) -> None:
        if base <= 0 or max_delay < base or factor < 1:
            raise ValueError("backoff needs base > 0, max_delay >= base and factor >= 1")
        self.base = base
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.rng: Rng = rng if rng is not None else random.Random()
        self.attempt = 0
        self._prev = base

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay for the ``attempt``-th retry (0-based)."""
        return min(self.max_delay, self.base * self.factor ** min(attempt, 64))

    def next_delay(self) -> float:
        ceiling = self.ceiling(self.attempt)
        self.attempt += 1
        if self.jitter == "full":
            delay = self.rng.uniform(0.0, ceiling)
        elif self.jitter == "decorrelated":
            delay = min(self.max_delay, self.rng.uniform(self.base, self._prev * 3.0))
        else:
            delay = ceiling
        delay = min(self.max_delay, max(0.0, delay))
        self._prev = max(self.base, delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self._prev = self.base


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class SourceStats:
    state: SourceState
    frames: int  # frames put into the queue
    dropped: int  # dropped by the queue's NEWEST_WINS policy
    invalid: int  # rejected by validation (wrong channels/dtype/size, unreadable image)
    reconnects: int
    fps: float  # over the last ``window_s`` seconds
    last_frame_age_s: float | None  # None before the first frame


class SourceUnavailable(SourceError):
    """The source can never work on this machine as configured: no retry, straight to FAILED."""


class _EndOfStream(Exception):
    """The capture reached its end (a file without loop)."""


class _Outcome(enum.Enum):
    STOP = "stop"
    END = "end"
    STALL = "stall"
    ERROR = "error"


# --------------------------------------------------------------------------- base source


class Source(ABC):
    """A decode thread feeding a bounded queue, driven by a :class:`SourceStateMachine`.

    Subclasses implement ``_open`` (raise :class:`SourceError` with a clear reason, or
    :class:`SourceUnavailable` if retrying is pointless), ``_read`` (an image, ``None`` when the
    read failed or timed out, or raise ``_EndOfStream``) and ``_release``. Only the decode
    thread touches the capture.
    """

    kind: str = "source"
    live: ClassVar[bool] = True
    #: "sleep": the source waits to meet its fps (files, generators); "skip": the capture runs
    #: at the camera's rate and frames over the cap are read and discarded (live captures).
    pacing: ClassVar[Literal["sleep", "skip"]] = "sleep"

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        queue_depth: int,
        policy: DropPolicy | None = None,
        on_status: Callable[[SourceStatus], None] | None = None,
        clock: Clock = time.monotonic,
        backoff: Backoff | None = None,
        stall_timeout_s: float = 5.0,
        max_attempts: int | None = None,
        fps_cap: float | None = None,
        size: tuple[int, int] | None = None,
        strict: bool = False,
        history: int = 256,
        stats_window_s: float = 5.0,
    ) -> None:
        self.name = name
        self.uri = uri
        self.display_uri = redact(uri)
        default_policy = DropPolicy.NEWEST_WINS if self.live else DropPolicy.BLOCK
        self.queue = FrameQueue(queue_depth, policy or default_policy)
        self.on_status = on_status
        self.clock = clock
        self.backoff = backoff if backoff is not None else Backoff()
        self.stall_timeout_s = stall_timeout_s
        self.max_attempts = max_attempts
        self.fps_cap = fps_cap
        self.size = size  # (width, height) requested; frames of another size are resized
        self.events: deque[SourceStatus] = deque(maxlen=history)
        self._machine = SourceStateMachine(name, uri, strict=strict)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._attempt = 0
        self._index = 0
        self._frames = 0
        self._invalid = 0
        self._reconnects = 0
        self._expected: tuple[int, int] | None = None  # (h, w) of this connection's frames
        self._rejected_reasons: set[str] = set()
        self._window_s = stats_window_s
        self._times: deque[float] = deque()
        self._last_frame_t: float | None = None
        self._stats_lock = threading.Lock()

    # ----------------------------------------------------------------- public API

    @property
    def state(self) -> SourceState:
        return self._machine.state

    @property
    def policy(self) -> DropPolicy:
        return self.queue.policy

    def start(self) -> Source:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the decode thread to finish and wait at most ``timeout`` s; ``True`` if it did.
        A capture stuck in a blocking read finishes on its own within its read timeout."""
        self._stop.set()
        self.queue.close()
        if self._thread is None:
            self._transition(SourceState.STOPPED, "stopped before start")
            return True
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if alive:
            logger.warning(
                "source %s: decode thread still busy %.1fs after stop()", self.name, timeout,
                extra=log_fields(source=self.name, uri=self.display_uri),
            )  # fmt: skip
            self._transition(SourceState.STOPPED, "stopped (decode thread still finishing)")
        return not alive

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame from the queue (``None`` on timeout, or when the source is over)."""
        return self.queue.get(timeout)

    def stats(self) -> SourceStats:
        now = self.clock()
        with self._stats_lock:
            while self._times and now - self._times[0] > self._window_s:
                self._times.popleft()
            n = len(self._times)
            span = (self._times[-1] - self._times[0]) if n >= 2 else 0.0
            fps = (n - 1) / span if span > 0 else 0.0
            age = None if self._last_frame_t is None else max(0.0, now - self._last_frame_t)
        return SourceStats(
            state=self.state, frames=self._frames, dropped=self.queue.dropped,
            invalid=self._invalid, reconnects=self._reconnects, fps=fps, last_frame_age_s=age,
        )  # fmt: skip

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- subclass hooks

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self) -> np.ndarray | None: ...

    @abstractmethod
    def _release(self) -> None: ...

    def _rate(self) -> float | None:
        """Frames per second to pace to, or ``None`` for as fast as possible."""
        return self.fps_cap

    # ----------------------------------------------------------------- events

    def _transition(self, new: SourceState, reason: str) -> bool:
        if self._stop.is_set() and new is not SourceState.STOPPED:
            return False  # stopping: the only move left is STOPPED
        event = self._machine.to(new, reason, attempt=self._attempt)
        if event is None:
            return False
        self._emit(event)
        return True

    def _emit(self, event: SourceStatus) -> None:
        self.events.append(event)
        if event.kind == "frame":
            level = logging.WARNING
            msg = "source %s: frame rejected: %s"
            args: tuple[object, ...] = (event.source, event.reason)
        else:
            level = {
                SourceState.STALLED: logging.WARNING,
                SourceState.RECONNECTING: logging.WARNING,
                SourceState.FAILED: logging.ERROR,
            }.get(event.new, logging.INFO)
            msg = "source %s: %s → %s: %s"
            args = (event.source, event.old.value, event.new.value, event.reason)
        fields = event.to_json()
        fields["event_ts"] = fields.pop("ts")  # the log line has its own "ts"
        logger.log(level, msg, *args, extra=log_fields(**fields))
        if self.on_status is None:
            return
        try:
            self.on_status(event)
        except Exception as exc:  # a status handler must never kill the decode thread
            logger.error(
                "source %s: status callback raised %s: %s (ignored)",
                self.name, type(exc).__name__, redact(str(exc)),
                extra=log_fields(source=self.name, traceback=redact(traceback.format_exc())),
            )  # fmt: skip

    def _reject(self, reason: str) -> None:
        self._invalid += 1
        if reason in self._rejected_reasons:
            return  # one event per distinct problem per connection; the counter keeps counting
        self._rejected_reasons.add(reason)
        state = self.state
        self._emit(
            SourceStatus(
                source=self.name, old=state, new=state, reason=redact(reason),
                uri=self.display_uri, attempt=self._attempt, ts=time.time(), kind="frame",
            )
        )  # fmt: skip

    # ----------------------------------------------------------------- validation

    def _validate(self, img: object) -> np.ndarray | None:
        """BGR uint8 H×W×3, converting what can be converted; ``None`` (+ event) otherwise."""
        if not isinstance(img, np.ndarray) or img.size == 0:
            self._reject("empty or undecodable frame")
            return None
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype != np.uint8:
            self._reject(f"unsupported pixel type {img.dtype} (expected uint8)")
            return None
        channels = 1 if img.ndim == 2 else (img.shape[2] if img.ndim == 3 else -1)
        if channels == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        elif channels != 3:
            self._reject(f"frame of shape {img.shape}: expected 1, 3 or 4 channels")
            return None
        h, w = int(img.shape[0]), int(img.shape[1])
        if self.size is not None:
            if (w, h) != self.size:
                img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        elif self._expected is None:
            self._expected = (h, w)
        elif self._expected != (h, w):
            eh, ew = self._expected
            self._reject(f"frame size changed from {ew}x{eh} to {w}x{h} mid-stream")
            return None
        return np.ascontiguousarray(img)

    # ----------------------------------------------------------------- decode thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # nothing leaves the decode thread
            logger.error(
                "source %s: decode thread crashed: %s: %s",
                self.name, type(exc).__name__, redact(str(exc)),
                extra=log_fields(source=self.name, traceback=redact(traceback.format_exc())),
            )  # fmt: skip
            self._transition(SourceState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._release_quietly()
            if self.state not in TERMINAL:
                self._transition(SourceState.STOPPED, "stopped")
            self.queue.close()

    def _loop(self) -> None:
        self._transition(SourceState.CONNECTING, f"opening {self.kind} {self.display_uri}")
        while not self._stop.is_set():
            try:
                self._open()
            except SourceUnavailable as exc:
                self._transition(SourceState.FAILED, str(exc))
                return
            except (SourceError, cv2.error, OSError) as exc:
                if not self._retry(f"cannot open {self.kind}: {exc}"):
                    return
                continue
            self._expected = None
            self._rejected_reasons.clear()
            outcome, reason = self._pump()
            if outcome is _Outcome.STOP:
                return
            if outcome is _Outcome.END:
                self._transition(SourceState.ENDED, reason)
                return
            if outcome is _Outcome.STALL and self.state is SourceState.STREAMING:
                self._transition(SourceState.STALLED, reason)
            if not self._retry(reason):
                return

    def _retry(self, reason: str) -> bool:
        """Release, back off, go back to CONNECTING; ``False`` when giving up or stopping."""
        self._release_quietly()
        self._attempt += 1
        if self.max_attempts is not None and self._attempt > self.max_attempts:
            tries = self._attempt - 1
            self._transition(
                SourceState.FAILED,
                f"{reason}; gave up after {tries} reconnect attempt{'s' if tries != 1 else ''}",
            )
            return False
        delay = self.backoff.next_delay()
        self._reconnects += 1
        self._transition(
            SourceState.RECONNECTING, f"{reason}; retry {self._attempt} in {delay:.2f}s"
        )
        if self._stop.wait(delay):
            return False
        return self._transition(SourceState.CONNECTING, f"reconnect attempt {self._attempt}")

    def _pump(self) -> tuple[_Outcome, str]:
        """Read, validate, enqueue until the stream ends, stalls, fails or we are stopped."""
        last_read = self.clock()
        rate = self._rate()
        period = 1.0 / rate if rate else 0.0
        next_due = self.clock()
        while not self._stop.is_set():
            try:
                raw = self._read()
            except _EndOfStream as exc:
                return _Outcome.END, str(exc) or "end of stream"
            except (SourceError, cv2.error, OSError) as exc:
                return _Outcome.ERROR, f"read error: {exc}"
            now = self.clock()
            if raw is None:
                silent = now - last_read
                if silent >= self.stall_timeout_s:
                    return _Outcome.STALL, (
                        f"no frame for {silent:.1f}s (stall_timeout_s={self.stall_timeout_s:g})"
                    )
                return _Outcome.ERROR, "stream disconnected (read failed)"
            last_read = now
            if period and self.pacing == "skip":
                if now < next_due:
                    continue  # over the fps cap: read and discard, keep the capture drained
                next_due = max(next_due + period, now - period)
            img = self._validate(raw)
            if img is None:
                continue
            if self.state is not SourceState.STREAMING:
                self._transition(SourceState.STREAMING, "receiving frames")
                self._attempt = 0
                self.backoff.reset()
            if not self._enqueue(img, now):
                return _Outcome.STOP, "stopped"
            if period and self.pacing == "sleep":
                next_due += period
                wait = next_due - self.clock()
                if wait > 0:
                    if self._stop.wait(wait):
                        return _Outcome.STOP, "stopped"
                else:
                    next_due = self.clock()
        return _Outcome.STOP, "stopped"

    def _enqueue(self, img: np.ndarray, t: float) -> bool:
        frame = Frame(
            source=self.name, index=self._index, image=img, t_capture=t, wall_time=time.time()
        )
        if self.queue.policy is DropPolicy.BLOCK:
            while not self.queue.put(frame, timeout=0.1):
                if self._stop.is_set() or self.queue.closed:
                    return False
        elif not self.queue.put(frame):
            return False
        self._index += 1
        self._frames += 1
        with self._stats_lock:
            self._times.append(t)
            self._last_frame_t = t
            while len(self._times) > 2 and t - self._times[0] > self._window_s:
                self._times.popleft()
        return True

    def _release_quietly(self) -> None:
        try:
            self._release()
        except Exception as exc:
            logger.warning(
                "source %s: releasing the capture failed: %s", self.name, redact(str(exc))
            )


# --------------------------------------------------------------------------- OpenCV helpers


def _release_capture(cap: cv2.VideoCapture | None) -> None:
    if cap is not None:
        with contextlib.suppress(cv2.error):
            cap.release()


@functools.cache
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (from its build information)."""
    return bool(re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.MULTILINE))


@functools.cache
def opencv_has_ffmpeg() -> bool:
    names = {cv2.videoio_registry.getBackendName(b) for b in cv2.videoio_registry.getBackends()}
    return "FFMPEG" in names


# --------------------------------------------------------------------------- concrete sources


class VideoFileSource(Source):
    """A video file through ``cv2.VideoCapture``. BLOCK policy (no frame is lost). ENDED at the
    end unless ``loop``. Paced to the file's fps when ``realtime``, to ``fps_cap`` when given,
    else as fast as the consumer takes frames."""

    kind = "video file"
    live = False

    def __init__(
        self, name: str, path: str | Path, *, loop: bool = False, realtime: bool = False,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        kwargs.setdefault("max_attempts", 3)
        super().__init__(name, str(path), **kwargs)
        self.path = Path(path)
        self.loop = loop
        self.realtime = realtime
        self.file_fps: float | None = None
        self.loops = 0
        self._cap: cv2.VideoCapture | None = None
        self._since_rewind = 0

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceError(
                f"video file not found: {self.path}", fix="check the source's uri path"
            )
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            _release_capture(cap)
            raise SourceError(
                f"OpenCV cannot decode {self.path}",
                fix="use a container/codec FFmpeg reads (mp4/h264, mkv, avi/mjpeg)",
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.file_fps = fps if 0.0 < fps < 1000.0 else None
        self._cap = cap
        self._since_rewind = 0

    def _rate(self) -> float | None:
        if self.realtime and self.file_fps:
            return min(self.file_fps, self.fps_cap) if self.fps_cap else self.file_fps
        return self.fps_cap

    def _capture(self) -> cv2.VideoCapture:
        assert self._cap is not None
        return self._cap

    def _read(self) -> np.ndarray | None:
        ok, img = self._capture().read()
        if ok:
            self._since_rewind += 1
            return img
        if not self.loop:
            raise _EndOfStream(f"end of file after {self._frames} frames")
        if self._since_rewind == 0:
            raise _EndOfStream("file has no decodable frames; nothing to loop")
        self.loops += 1
        _release_capture(self._cap)
        self._cap = None
        self._open()  # reopening is the one rewind every container supports
        ok, img = self._capture().read()
        if not ok:
            raise _EndOfStream("file has no decodable frames after rewinding")
        self._since_rewind = 1
        return img

    def _release(self) -> None:
        _release_capture(self._cap)
        self._cap = None


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageFolderSource(Source):
    """The images of a folder in name order (BLOCK policy); loops when ``loop``."""

    kind = "image folder"
    live = False

    def __init__(self, name: str, folder: str | Path, *, loop: bool = False, **kwargs: Any):
        kwargs.setdefault("max_attempts", 3)
        super().__init__(name, str(folder), **kwargs)
        self.folder = Path(folder)
        self.loop = loop
        self._files: list[Path] = []
        self._pos = 0

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}", fix="check the uri")
        files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise SourceError(
                f"no images in {self.folder}",
                fix=f"put files with one of {sorted(IMAGE_SUFFIXES)} there",
            )
        self._files = files
        self._pos = 0

    def _read(self) -> np.ndarray | None:
        if self._pos >= len(self._files):
            if not self.loop:
                raise _EndOfStream(f"end of folder after {len(self._files)} images")
            self._pos = 0
        path = self._files[self._pos]
        self._pos += 1
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            # an unreadable file is a bad frame, not a dead source: hand validation an empty one
            return np.empty((0, 0, 3), np.uint8)
        return img

    def _release(self) -> None:
        self._files = []


class OpenCvStreamSource(Source):
    """A live capture through OpenCV: ``v4l2`` (``/dev/videoN`` or an index, V4L2 backend),
    ``rtsp`` and ``http`` (MJPEG over HTTP(S); FFmpeg backend with open/read timeouts, so a
    dead peer ends a read within ``stall_timeout_s``). NEWEST_WINS; retries forever."""

    live = True
    pacing = "skip"

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        kind: Literal["v4l2", "rtsp", "http"],
        open_timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, uri, **kwargs)
        self.kind = kind
        self.open_timeout_s = open_timeout_s or max(2.0, 2.0 * self.stall_timeout_s)
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        if self.kind == "v4l2":
            cap = self._open_v4l2()
        else:
            if not opencv_has_ffmpeg():
                raise SourceUnavailable(
                    f"OpenCV has no FFmpeg backend; cannot read {self.kind} streams",
                    fix="install an OpenCV build with FFmpeg "
                    "(opencv-python, or JetPack's python3-opencv)",
                )
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(100, int(self.stall_timeout_s * 1000)),
            ]  # fmt: skip
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
            if not cap.isOpened():
                _release_capture(cap)
                raise SourceError(
                    f"cannot connect to {self.display_uri} (unreachable, refused, or not "
                    f"{'an MJPEG' if self.kind == 'http' else 'an RTSP'} stream)"
                )
        if self.size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self._cap = cap

    def _open_v4l2(self) -> cv2.VideoCapture:
        target: int | str
        if self.uri.isdigit():
            target = int(self.uri)
            device = Path(f"/dev/video{target}")
        else:
            target = self.uri
            device = Path(self.uri)
        if not device.exists():
            raise SourceError(f"camera {device} not found", fix="plug the camera in or fix the uri")
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            _release_capture(cap)
            raise SourceError(
                f"cannot open camera {device}: busy (another process has it) or not a "
                "capture device",
                fix="stop the other user (`fuser` on the device) or pick the capture node",
            )
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(100, int(self.stall_timeout_s * 1000)))
        return cap

    def _read(self) -> np.ndarray | None:
        assert self._cap is not None
        ok, img = self._cap.read()
        return img if ok else None

    def _release(self) -> None:
        _release_capture(self._cap)
        self._cap = None


GSTREAMER_MISSING = "OpenCV has no GStreamer support; install JetPack's python3-opencv"


class GStreamerSource(Source):
    """A GStreamer pipeline string ending in ``appsink`` (``cv2.CAP_GSTREAMER``). FAILED at
    once, with :data:`GSTREAMER_MISSING` as the reason, when OpenCV lacks GStreamer."""

    kind = "gstreamer pipeline"
    live = True

    def __init__(
        self, name: str, pipeline: str, *, gstreamer: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, pipeline, **kwargs)
        self._gstreamer = gstreamer
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        available = self._gstreamer if self._gstreamer is not None else opencv_has_gstreamer()
        if not available:
            raise SourceUnavailable(GSTREAMER_MISSING)
        if "appsink" not in self.uri:
            raise SourceUnavailable(
                "GStreamer pipeline does not end in appsink",
                fix="end it with '! appsink drop=true max-buffers=1 sync=false'",
            )
        cap = cv2.VideoCapture(self.uri, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            _release_capture(cap)
            raise SourceError(
                f"GStreamer pipeline did not start: {self.display_uri}",
                fix="try it with gst-launch-1.0 (replace appsink with fakesink)",
            )
        self._cap = cap

    def _read(self) -> np.ndarray | None:
        assert self._cap is not None
        ok, img = self._cap.read()
        return img if ok else None

    def _release(self) -> None:
        _release_capture(self._cap)
        self._cap = None


class SyntheticSource(Source):
    """A moving test pattern from :class:`SceneAnimator` at ``fps_cap`` (default 30 fps)."""

    kind = "synthetic"
    live = True

    def __init__(self, name: str, *, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(name, kwargs.pop("uri", "synthetic://"), **kwargs)
        self.seed = seed
        self._animator: SceneAnimator | None = None

    def _open(self) -> None:
        w, h = self.size if self.size is not None else (640, 360)
        self._animator = SceneAnimator(seed=self.seed, width=w, height=h)

    def _rate(self) -> float | None:
        return self.fps_cap or 30.0

    def _read(self) -> np.ndarray | None:
        assert self._animator is not None
        image, _ = self._animator.next_frame()
        return image

    def _release(self) -> None:
        self._animator = None


# --------------------------------------------------------------------------- GStreamer builders
#
# Element names, caps and properties follow NVIDIA Jetson Linux Developer Guide, "Accelerated
# GStreamer" (https://docs.nvidia.com/jetson/archives/r35.6.1/DeveloperGuide/SD/Multimedia/
# AcceleratedGstreamer.html): nvarguscamerasrc (sensor-id) → video/x-raw(memory:NVMM) NV12 →
# nvvidconv (flip-method 0-7) for CSI capture; nvv4l2decoder (the gst-v4l2 H.264/H.265 decoder
# that replaced gst-omx in r34.1) after rtph26Xdepay ! h26Xparse for RTSP. nvvidconv copies out
# of NVMM to BGRx; videoconvert makes the BGR that OpenCV's appsink expects.

_APPSINK_TAIL = (
    "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
    "appsink drop=true max-buffers=1 sync=false"
)


def gst_csi_pipeline(sensor_id: int, width: int, height: int, fps: int, flip: int = 0) -> str:
    """A Jetson CSI camera through ``nvarguscamerasrc``, BGR frames into OpenCV's appsink."""
    if sensor_id < 0 or width <= 0 or height <= 0 or fps <= 0:
        raise ValueError("sensor_id >= 0 and positive width, height and fps are required")
    if not 0 <= flip <= 7:
        raise ValueError("flip-method must be 0-7 (see nvvidconv)")
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
        f"nvvidconv flip-method={flip} ! {_APPSINK_TAIL}"
    )


def gst_rtsp_hw_pipeline(
    url: str, codec: Literal["h264", "h265"] = "h264", latency_ms: int = 200
) -> str:
    """An RTSP H.264/H.265 stream decoded by the Jetson's NVDEC (``nvv4l2decoder``)."""
    if codec not in ("h264", "h265"):
        raise ValueError("codec must be 'h264' or 'h265'")
    if not url.startswith(("rtsp://", "rtsps://")) or '"' in url:
        raise ValueError("url must be an rtsp:// or rtsps:// URL without double quotes")
    if latency_ms < 0:
        raise ValueError("latency_ms must be >= 0")
    location = f'"{url}"' if re.search(r"[\s!]", url) else url
    return (
        f"rtspsrc location={location} latency={latency_ms} ! rtp{codec}depay ! {codec}parse ! "
        f"nvv4l2decoder ! nvvidconv ! {_APPSINK_TAIL}"
    )


# --------------------------------------------------------------------------- factory


def make_source(
    cfg: SourceConfig,
    *,
    queue_depth: int,
    on_status: Callable[[SourceStatus], None] | None = None,
    clock: Clock = time.monotonic,
    backoff: Backoff | None = None,
    max_attempts: int | None = None,
    realtime: bool = False,
    strict: bool = False,
) -> Source:
    """Build the source ``cfg`` describes (not started). ``max_attempts`` defaults to 3 for
    files and folders and to forever for live sources."""
    common: dict[str, Any] = {
        "queue_depth": queue_depth,
        "on_status": on_status,
        "clock": clock,
        "backoff": backoff,
        "stall_timeout_s": cfg.stall_timeout_s,
        "fps_cap": cfg.fps_cap,
        "size": (cfg.width, cfg.height) if cfg.width and cfg.height else None,
        "strict": strict,
    }
    if max_attempts is not None or cfg.type not in ("file", "images"):
        common["max_attempts"] = max_attempts
    if cfg.type == "file":
        return VideoFileSource(cfg.name, cfg.uri, loop=cfg.loop, realtime=realtime, **common)
    if cfg.type == "images":
        return ImageFolderSource(cfg.name, cfg.uri, loop=cfg.loop, **common)
    if cfg.type in ("v4l2", "rtsp", "http"):
        return OpenCvStreamSource(cfg.name, cfg.uri, kind=cfg.type, **common)
    if cfg.type == "gstreamer":
        return GStreamerSource(cfg.name, cfg.uri, **common)
    if cfg.type == "synthetic":
        seed = int(cfg.uri) if cfg.uri.isdigit() else 0
        return SyntheticSource(cfg.name, seed=seed, uri=cfg.uri or "synthetic://", **common)
    raise SourceError(f"unknown source type {cfg.type!r}", fix="see SourceConfig.type")
