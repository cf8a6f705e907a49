"""Remote commands: ``edge/<fleet>/<device>/cmd/<name>`` → ``.../cmd/response``.

A request is a JSON object::

    {"id": "b7c1", "expires": 1760000000.0, "args": {...}}     # or "ts" + "ttl_s"

:class:`CommandDispatcher` validates it, refuses expired, unknown, malformed and oversize
requests with an error response, answers a repeated ``id`` with the stored response (never
executes twice; the last ``history`` responses are kept in ``<state>/commands.json`` across
restarts) and runs handlers on its own worker thread, never on the MQTT client's. The daemon
provides the actions through the :class:`Control` protocol.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.core.errors import CommsError, EdgeAgentError
from agent.core.fsutil import atomic_write_bytes
from agent.core.logs import log_fields

from .topics import response_payload

log = logging.getLogger(__name__)

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_SECRET_KEYS = ("password", "secret", "token", "passphrase", "private_key")


class Control(Protocol):
    """What the daemon lets remote commands do. Methods run on the command worker thread and
    may raise :class:`agent.core.errors.EdgeAgentError` (its message becomes the error response)."""

    def config_json(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data (secrets are redacted again here)."""
        ...

    def reload(self) -> str:
        """Re-read the configuration (like SIGHUP); returns a short summary."""
        ...

    def set_profile(self, name: str) -> str:
        """Switch the device profile; returns a summary."""
        ...

    def latest_frame(self, source: str | None) -> Any:
        """The latest BGR frame (numpy HxWx3 uint8) of ``source`` (None = first), or None."""
        ...

    def collect_calib(self, model: str, count: int, source: str | None) -> dict[str, Any]:
        """Save ``count`` frames into ``calib/<model>/``; returns e.g. {"saved": n, "dir": ...}."""
        ...

    def rollback_model(self, model: str | None) -> dict[str, Any]:
        """Roll ``model`` (None = the serving one) back to its previous engine."""
        ...


# --------------------------------------------------------------------------- request / args


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoArgs(_Args):
    pass


class SetProfileArgs(_Args):
    name: str = Field(pattern=_NAME, description="Device profile name.")


class SnapshotArgs(_Args):
    source: str | None = Field(default=None, pattern=_NAME, description="Source name.")
    max_bytes: int = Field(default=128 * 1024, ge=4096, le=4 << 20, description="JPEG cap.")
    quality: int = Field(default=85, ge=20, le=95, description="Starting JPEG quality.")


class CalibCollectArgs(_Args):
    model: str = Field(pattern=_NAME, description="Model whose calib/<model>/ gets the frames.")
    count: int = Field(default=32, ge=1, le=4096, description="Frames to save.")
    source: str | None = Field(default=None, pattern=_NAME, description="Source name.")


class RollbackArgs(_Args):
    model: str | None = Field(default=None, pattern=_NAME, description="Model name.")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="Request id (idempotency key).")
    expires: float | None = Field(default=None, gt=0, description="Epoch seconds.")
    ts: float | None = Field(default=None, gt=0, description="Issue time, epoch seconds.")
    ttl_s: float | None = Field(default=None, gt=0, le=86400, description="Lifetime from ts.")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments.")

    @model_validator(mode="after")
    def _expiry(self) -> Request:
        if self.expires is None and (self.ts is None or self.ttl_s is None):
            raise ValueError("a request needs 'expires' (epoch s) or both 'ts' and 'ttl_s'")
        return self

    @property
    def deadline(self) -> float:
        if self.expires is not None:
            return self.expires
        assert self.ts is not None and self.ttl_s is not None
        return self.ts + self.ttl_s


class CommandFailed(CommsError):
    """A handler refused or failed; ``code`` goes into the error response."""

    def __init__(self, message: str, *, code: str = "failed", fix: str | None = None) -> None:
        self.code = code
        super().__init__(message, fix=fix)


@dataclass(frozen=True)
class Handler:
    args: type[_Args]
    run: Callable[[Any], Any]


def redact(value: Any) -> Any:
    """Copy of ``value`` with secret-looking keys replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: "***"
            if isinstance(k, str) and any(s in k.lower() for s in _SECRET_KEYS) and v is not None
            else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def encode_jpeg(frame: Any, *, max_bytes: int, quality: int) -> tuple[bytes, int, int]:
    """JPEG of ``frame`` no larger than ``max_bytes``: lowers quality, then halves the size."""
    import cv2
    import numpy as np

    image = np.asarray(frame)
    if image.ndim not in (2, 3) or image.size == 0:
        raise CommandFailed(f"frame has shape {image.shape}", code="no_frame")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    while True:
        for q in (quality, 70, 50, 30):
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, min(q, quality)])
            if ok and buf.nbytes <= max_bytes:
                return buf.tobytes(), int(image.shape[1]), int(image.shape[0])
        if min(image.shape[:2]) < 32:
            raise CommandFailed(
                f"cannot fit a JPEG in {max_bytes} bytes", code="too_large", fix="raise max_bytes"
            )
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2))


# --------------------------------------------------------------------------- dispatcher


@dataclass(frozen=True)
class _Item:
    kind: str  # "cmd" | "oversize" | "call"
    name: str
    payload: bytes = b""
    call: Callable[[], None] | None = None


class CommandDispatcher:
    """Validates, deduplicates and executes command requests on one worker thread.

    ``publish(payload_bytes)`` sends a response (must not block). ``submit`` is safe to call
    from the MQTT client's thread: it only checks the size and enqueues. ``handle`` runs one request
    synchronously and returns the response bytes (used by the worker and by tests).
    """

    def __init__(
        self,
        control: Control | None,
        *,
        device: str,
        publish: Callable[[bytes], None],
        state_dir: Path | None,
        max_payload_bytes: int,
        history: int = 256,
        queue_size: int = 64,
        clock: Callable[[], float] = time.time,
        extra_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.control = control
        self.device = device
        self._publish = publish
        self.max_payload_bytes = max_payload_bytes
        self.history = history
        self.clock = clock
        self._extra_info = extra_info
        self._path = None if state_dir is None else Path(state_dir) / "commands.json"
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.handlers: dict[str, Handler] = {}
        self.executed = 0
        self.refused = 0
        self.busy = 0
        self.worker_errors = 0
        self._done_lock = threading.Lock()
        self._load()
        self._register_builtin()

    # ------------------------------------------------------------------ registry

    def register(self, name: str, args: type[_Args], run: Callable[[Any], Any]) -> None:
        """Add or replace a command; ``run(validated_args)`` returns JSON-able data."""
        self.handlers[name] = Handler(args, run)

    def _register_builtin(self) -> None:
        self.register("ping", NoArgs, self._ping)
        self.register("get-config", NoArgs, lambda a: redact(self._control().config_json()))
        self.register("reload", NoArgs, lambda a: {"summary": self._control().reload()})
        self.register(
            "set-profile",
            SetProfileArgs,
            lambda a: {"summary": self._control().set_profile(a.name)},
        )
        self.register("snapshot", SnapshotArgs, self._snapshot)
        self.register(
            "calib-collect",
            CalibCollectArgs,
            lambda a: self._control().collect_calib(a.model, a.count, a.source),
        )
        self.register(
            "rollback-model", RollbackArgs, lambda a: self._control().rollback_model(a.model)
        )

    def _control(self) -> Control:
        if self.control is None:
            raise CommandFailed("this agent has no control interface", code="unavailable")
        return self.control

    def _ping(self, args: NoArgs) -> dict[str, Any]:
        info: dict[str, Any] = {"pong": True, "ts": round(self.clock(), 3)}
        if self._extra_info is not None:
            info.update(self._extra_info())
        return info

    def _snapshot(self, args: SnapshotArgs) -> dict[str, Any]:
        frame = self._control().latest_frame(args.source)
        if frame is None:
            raise CommandFailed(
                f"no frame from source {args.source or '(first)'} yet", code="no_frame"
            )
        limit = min(args.max_bytes, self.max_payload_bytes * 3 // 4 - 1024)
        jpeg, width, height = encode_jpeg(frame, max_bytes=max(2048, limit), quality=args.quality)
        return {
            "source": args.source,
            "width": width,
            "height": height,
            "bytes": len(jpeg),
            "jpeg_b64": base64.b64encode(jpeg).decode("ascii"),
        }

    # ------------------------------------------------------------------ worker

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edge-commands", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        self._thread = None

    def submit(self, name: str, payload: bytes) -> bool:
        """Enqueue one request (thread-safe, never blocks); False when the queue is full."""
        item = (
            _Item("oversize", name, str(len(payload)).encode())
            if len(payload) > self.max_payload_bytes
            else _Item("cmd", name, payload)
        )
        return self._put(item)

    def call_soon(self, name: str, call: Callable[[], None]) -> bool:
        """Run ``call`` on the worker thread (used for OTA messages); False when full."""
        return self._put(_Item("call", name, call=call))

    def _put(self, item: _Item) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.busy += 1
            log.warning("command queue full; message dropped", extra=log_fields(name=item.name))
            return False

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item.kind == "call":
                    assert item.call is not None
                    item.call()
                    continue
                if item.kind == "oversize":
                    self.refused += 1
                    size = int(item.payload.decode())
                    log.warning(
                        "command refused: payload too large",
                        extra=log_fields(
                            command=item.name, size=size, limit=self.max_payload_bytes
                        ),
                    )
                    out = self._error(
                        None,
                        item.name,
                        "too_large",
                        f"request is {size} bytes; the limit is {self.max_payload_bytes}",
                    )
                else:
                    out = self.handle(item.name, item.payload)
                self._publish(out)
            except Exception:  # a bad handler must never kill the worker
                self.worker_errors += 1
                log.exception("command worker error", extra=log_fields(name=item.name))

    # ------------------------------------------------------------------ one request

    def _error(self, rid: str | None, name: str | None, code: str, message: str) -> bytes:
        return response_payload(
            request_id=rid,
            command=name,
            device=self.device,
            ok=False,
            error_code=code,
            error=message,
            ts=self.clock(),
        )

    def handle(self, name: str, payload: bytes) -> bytes:
        """Validate and execute one request; returns the response payload."""
        if len(payload) > self.max_payload_bytes:
            self.refused += 1
            return self._error(None, name, "too_large", f"request is {len(payload)} bytes")
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as err:
            self.refused += 1
            log.warning("command refused: bad JSON", extra=log_fields(command=name, error=str(err)))
            return self._error(None, name, "bad_json", f"request is not JSON: {err}")
        rid = raw.get("id") if isinstance(raw, dict) else None
        rid = rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None
        if rid is not None:
            with self._done_lock:
                stored = self._done.get(rid)
                if stored is not None:
                    self._done.move_to_end(rid)
            if stored is not None:
                log.info(
                    "command repeated; stored answer sent", extra=log_fields(id=rid, command=name)
                )
                return stored
        try:
            request = Request.model_validate(raw)
        except ValidationError as err:
            self.refused += 1
            msg = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in err.errors()[:3]
            )
            log.warning("command refused: bad request", extra=log_fields(command=name, error=msg))
            return self._error(rid, name, "bad_request", msg)
        if request.deadline < self.clock():
            self.refused += 1
            log.warning(
                "command refused: expired",
                extra=log_fields(id=request.id, command=name, expired_at=request.deadline),
            )
            return self._remember(
                request.id, self._error(request.id, name, "expired", "request expired")
            )
        handler = self.handlers.get(name)
        if handler is None:
            self.refused += 1
            log.warning("command refused: unknown", extra=log_fields(id=request.id, command=name))
            return self._error(
                request.id,
                name,
                "unknown_command",
                f"unknown command {name!r}; known: " + ", ".join(sorted(self.handlers)),
            )
        try:
            args = handler.args.model_validate(request.args)
        except ValidationError as err:
            self.refused += 1
            msg = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in err.errors()[:3]
            )
            log.warning(
                "command refused: bad args",
                extra=log_fields(id=request.id, command=name, error=msg),
            )
            return self._error(request.id, name, "bad_args", msg)
        started = time.monotonic()
        try:
            result = handler.run(args)
            json.dumps(result, default=str)
            out = response_payload(
                request_id=request.id,
                command=name,
                device=self.device,
                ok=True,
                result=result,
                ts=self.clock(),
            )
        except EdgeAgentError as err:
            code = err.code if isinstance(err, CommandFailed) else "failed"
            log.warning(
                "command failed: %s",
                err,
                extra=log_fields(id=request.id, command=name, code=code),
            )
            out = self._error(request.id, name, code, str(err))
        except Exception as err:
            log.exception("command failed", extra=log_fields(id=request.id, command=name))
            out = self._error(request.id, name, "failed", f"{type(err).__name__}: {err}")
        self.executed += 1
        log.info(
            "command executed",
            extra=log_fields(
                id=request.id, command=name, ms=round((time.monotonic() - started) * 1e3, 1)
            ),
        )
        return self._remember(request.id, out)

    # ------------------------------------------------------------------ idempotency store

    def _remember(self, rid: str, out: bytes) -> bytes:
        with self._done_lock:
            self._done[rid] = out
            while len(self._done) > self.history:
                self._done.popitem(last=False)
            pairs = [[k, v.decode()] for k, v in self._done.items()]
        if self._path is not None:
            try:
                atomic_write_bytes(self._path, json.dumps(pairs).encode())
            except OSError as err:
                log.warning("cannot persist command history", extra=log_fields(error=str(err)))
        return out

    def _load(self) -> None:
        if self._path is None or not self._path.is_file():
            return
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError) as err:
            log.warning(
                "command history unreadable; starting empty", extra=log_fields(error=str(err))
            )
            return
        if isinstance(data, list):
            for pair in data[-self.history :]:
                if isinstance(pair, list) and len(pair) == 2:
                    key, value = pair
                    if isinstance(key, str) and isinstance(value, str):
                        self._done[key] = value.encode()
