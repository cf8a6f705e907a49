"""Remote commands: ``edge/<fleet>/<device>/cmd/<name>`` → ``.../cmd/response``.

:class:`CommandDispatcher` looks a command up in its name → handler table, refuses expired,
unknown, malformed and oversize requests with an error response (see
:mod:`agent.comms.commands.requests`), answers a repeated ``id`` with the stored response
(:mod:`agent.comms.commands.replay`) and runs handlers on its own worker thread, never on the MQTT
client's. The daemon provides the actions through :class:`agent.comms.ports.Control`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.comms.commands.handlers import BuiltinHandlers, Handler
from agent.comms.commands.replay import ReplayStore
from agent.comms.commands.requests import (
    CommandArgs,
    CommandFailed,
    Refused,
    Request,
    parse_args,
    parse_json,
    parse_request,
    request_id,
)
from agent.comms.payloads import response_payload
from agent.comms.ports import Control
from agent.core.errors import EdgeAgentError
from agent.core.logs import log_fields

log = logging.getLogger(__name__)


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
        self.clock = clock
        path = None if state_dir is None else Path(state_dir) / "commands.json"
        self.replay = ReplayStore(path, history)
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.handlers: dict[str, Handler] = BuiltinHandlers(
            control, clock=clock, max_payload_bytes=max_payload_bytes, extra_info=extra_info
        ).table()
        self.executed = 0
        self.refused = 0
        self.busy = 0
        self.worker_errors = 0
        self.replay.load()

    def register(self, name: str, args: type[CommandArgs], run: Callable[[Any], Any]) -> None:
        """Add or replace a command; ``run(validated_args)`` returns JSON-able data."""
        self.handlers[name] = Handler(args, run)

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
                self._run_item(item)
            except Exception:  # a bad handler must never kill the worker
                self.worker_errors += 1
                log.exception("command worker error", extra=log_fields(name=item.name))

    def _run_item(self, item: _Item) -> None:
        if item.kind == "call":
            assert item.call is not None
            item.call()
            return
        if item.kind == "oversize":
            self._publish(self._oversize(item.name, int(item.payload.decode())))
        else:
            self._publish(self.handle(item.name, item.payload))

    def _oversize(self, name: str, size: int) -> bytes:
        self.refused += 1
        log.warning(
            "command refused: payload too large",
            extra=log_fields(command=name, size=size, limit=self.max_payload_bytes),
        )
        return self._error(
            None,
            name,
            "too_large",
            f"request is {size} bytes; the limit is {self.max_payload_bytes}",
        )

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
        try:
            raw = parse_json(name, payload, self.max_payload_bytes)
            rid = request_id(raw)
            stored = self.replay.get(rid)
            if stored is not None:
                log.info(
                    "command repeated; stored answer sent", extra=log_fields(id=rid, command=name)
                )
                return stored
            request = parse_request(name, raw, rid, self.clock())
            handler = self._handler(name, request)
            args = parse_args(name, request, handler.args)
        except Refused as refusal:
            return self._refuse(name, refusal)
        return self.replay.remember(request.id, self._execute(name, request, handler, args))

    def _handler(self, name: str, request: Request) -> Handler:
        handler = self.handlers.get(name)
        if handler is None:
            raise Refused(
                "unknown_command",
                f"unknown command {name!r}; known: " + ", ".join(sorted(self.handlers)),
                request_id=request.id,
                log_message="command refused: unknown",
                log_extra={"id": request.id, "command": name},
            )
        return handler

    def _refuse(self, name: str, refusal: Refused) -> bytes:
        self.refused += 1
        if refusal.log_message is not None:
            log.warning(refusal.log_message, extra=log_fields(**refusal.log_extra))
        out = self._error(refusal.request_id, name, refusal.code, refusal.message)
        if refusal.remember and refusal.request_id is not None:
            return self.replay.remember(refusal.request_id, out)
        return out

    def _execute(self, name: str, request: Request, handler: Handler, args: CommandArgs) -> bytes:
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
        return out
