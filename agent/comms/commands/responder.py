"""One request → its one response: replay of a repeated id, validation, the handler, the error
response. Runs on a command lane's thread (or synchronously in tests); never raises.

Everything from the network that reaches a response or a log line (the command name from the
topic, validation messages naming the request's keys) goes through
:func:`agent.core.jsonlimits.sanitize_text` first.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.comms.commands.handlers import Handler
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
from agent.core.errors import EdgeAgentError
from agent.core.jsonlimits import sanitize_text
from agent.core.logs import log_fields

log = logging.getLogger(__name__)

#: the longest command name echoed in a response or a log line
MAX_NAME_CHARS = 64
#: the longest error message sent
MAX_MESSAGE_CHARS = 1024


def clean_name(name: str) -> str:
    """A command name from a topic, fit to log and publish."""
    return sanitize_text(name, max_len=MAX_NAME_CHARS)


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: sanitize_text(v, max_len=256) if isinstance(v, str) else v for k, v in fields.items()
    }


class Responder:
    """Answers requests with the commands of ``handlers``; ``replay`` keeps answered ids."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        replay: ReplayStore,
        *,
        device: str,
        max_payload_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.handlers = handlers
        self.replay = replay
        self.device = device
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock
        self.executed = 0
        self.refused = 0

    def error(
        self,
        rid: str | None,
        name: str | None,
        code: str,
        message: str,
        *,
        retry_after_s: float | None = None,
    ) -> bytes:
        """An error response (``retry_after_s`` for ``busy`` and ``rate_limited``)."""
        return response_payload(
            request_id=rid,
            command=name,
            device=self.device,
            ok=False,
            error_code=code,
            error=sanitize_text(message, max_len=MAX_MESSAGE_CHARS),
            ts=self.clock(),
            retry_after_s=retry_after_s,
        )

    def handle(self, name: str, payload: bytes) -> bytes:
        """Parse (bounded), validate and execute one request; the response (id null when the
        request could not be read)."""
        name = clean_name(name)
        try:
            raw = parse_json(name, payload, self.max_payload_bytes)
        except Refused as refusal:
            return self.refuse(name, refusal)
        return self.answer(name, raw, request_id(raw))

    def lane_of(self, name: str) -> str | None:
        """The lane of command ``name``; None for an unknown name."""
        handler = self.handlers.get(name)
        return None if handler is None else handler.lane

    def answer(self, name: str, raw: Any, rid: str | None) -> bytes:
        """The response to one parsed request (``rid``: its usable id, if any)."""
        stored = self.replay.get(rid)
        if stored is not None:
            log.info("command repeated; stored answer sent", extra=log_fields(id=rid, command=name))
            return stored
        try:
            request = parse_request(name, raw, rid, self.clock())
            handler = self._handler(name, request)
            args = parse_args(name, request, handler.args)
        except Refused as refusal:
            return self.refuse(name, refusal)
        out = self._execute(name, request, handler, args)
        return self.replay.remember(request.id, out) if handler.remember else out

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

    def refuse(self, name: str, refusal: Refused) -> bytes:
        """Count and log ``refusal``; its error response (stored when it says so)."""
        self.refused += 1
        if refusal.log_message is not None:
            log.warning(refusal.log_message, extra=log_fields(**_clean_fields(refusal.log_extra)))
        out = self.error(refusal.request_id, name, refusal.code, refusal.message)
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
                sanitize_text(str(err), max_len=MAX_MESSAGE_CHARS),
                extra=log_fields(id=request.id, command=name, code=code),
            )
            out = self.error(request.id, name, code, str(err))
        except Exception as err:
            log.exception("command failed", extra=log_fields(id=request.id, command=name))
            out = self.error(request.id, name, "failed", f"{type(err).__name__}: {err}")
        self.executed += 1
        log.info(
            "command executed",
            extra=log_fields(
                id=request.id, command=name, ms=round((time.monotonic() - started) * 1e3, 1)
            ),
        )
        return out
