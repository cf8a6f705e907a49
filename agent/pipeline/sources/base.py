"""The source interface: a decode thread feeding a bounded queue, driven by its state machine.

A :class:`Source` opens its capture on its own thread, decodes frames, validates them (BGR uint8
H×W×3; gray and BGRA are converted, anything else is dropped with one status event) and puts
them into a :class:`~agent.pipeline.sources.queue.FrameQueue`.

A stall (no frame for ``stall_timeout_s``) or a disconnect releases the capture, waits a
:class:`~agent.pipeline.sources.backoff.Backoff` delay (exponential, jittered) and reopens;
after ``max_attempts`` failed reconnects in a row (``None`` = forever, the default for live
sources) the source is FAILED. Nothing raises out of the decode thread, and a status callback
that raises is logged, not fatal. Every URI and reason in a log record or a
:class:`~agent.pipeline.sources.state.SourceStatus` is redacted.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import ClassVar, Literal

import cv2
import numpy as np

from agent.core.errors import SourceError
from agent.core.logs import log_fields
from agent.core.redact import redact_text
from agent.pipeline.frames import Frame
from agent.pipeline.sources.backoff import Backoff
from agent.pipeline.sources.queue import DropPolicy, FrameQueue
from agent.pipeline.sources.state import (
    TERMINAL,
    SourceState,
    SourceStateMachine,
    SourceStats,
    SourceStatus,
)
from agent.pipeline.sources.validate import FrameCheck

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class SourceUnavailable(SourceError):
    """The source can never work on this machine as configured: no retry, straight to FAILED."""


class EndOfStream(Exception):
    """The capture reached its end (a file without loop)."""


class _Outcome(enum.Enum):
    STOP = "stop"
    END = "end"
    STALL = "stall"
    ERROR = "error"


class Source(ABC):
    """A decode thread feeding a bounded queue, driven by a :class:`SourceStateMachine`.

    Subclasses implement ``_open`` (raise :class:`SourceError` with a clear reason, or
    :class:`SourceUnavailable` if retrying is pointless), ``_read`` (an image, ``None`` when the
    read failed or timed out, or raise ``EndOfStream``) and ``_release``. Only the decode
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
        self.display_uri = redact_text(uri)
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
        self._check = FrameCheck(size)
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

    @property
    def thread(self) -> threading.Thread | None:
        """The decode thread (None before :meth:`start`)."""
        return self._thread

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
            log.warning(
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
        log.log(level, msg, *args, extra=log_fields(**fields))
        if self.on_status is None:
            return
        try:
            self.on_status(event)
        except Exception as exc:  # a status handler must never kill the decode thread
            log.error(
                "source %s: status callback raised %s: %s (ignored)",
                self.name, type(exc).__name__, redact_text(str(exc)),
                extra=log_fields(source=self.name, traceback=redact_text(traceback.format_exc())),
            )  # fmt: skip

    def _reject(self, reason: str) -> None:
        self._invalid += 1
        if reason in self._rejected_reasons:
            return  # one event per distinct problem per connection; the counter keeps counting
        self._rejected_reasons.add(reason)
        state = self.state
        self._emit(
            SourceStatus(
                source=self.name, old=state, new=state, reason=redact_text(reason),
                uri=self.display_uri, attempt=self._attempt, ts=time.time(), kind="frame",
            )
        )  # fmt: skip

    def _validate(self, img: object) -> np.ndarray | None:
        """BGR uint8 H×W×3, converting what can be converted; ``None`` (+ event) otherwise."""
        checked = self._check.check(img)
        if isinstance(checked, str):
            self._reject(checked)
            return None
        return checked

    # ----------------------------------------------------------------- decode thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # nothing leaves the decode thread
            log.error(
                "source %s: decode thread crashed: %s: %s",
                self.name, type(exc).__name__, redact_text(str(exc)),
                extra=log_fields(source=self.name, traceback=redact_text(traceback.format_exc())),
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
            self._check.reset()
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
            except EndOfStream as exc:
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
            log.warning(
                "source %s: releasing the capture failed: %s", self.name, redact_text(str(exc))
            )
