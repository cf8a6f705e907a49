"""Command requests: the JSON envelope, each command's arguments, and why a request is refused.

A request is a JSON object::

    {"id": "b7c1", "expires": 1760000000.0, "client": "ops-1", "args": {...}}  # or "ts" + "ttl_s"

:func:`parse_json` (size, depth and item count bounded before parsing), :func:`request_id`,
:func:`request_client` and :func:`parse_request` turn the wire bytes into a :class:`Request` or
raise :class:`Refused`, which carries the error response's code and message and the log line
that goes with it. Nothing here executes or stores anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.errors import CommsError
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_CLIENT = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
_CLIENT_RE = re.compile(_CLIENT)
MAX_ID_CHARS = 128
#: nesting and element bounds of a request (the size bound is ``mqtt.max_payload_kib``)
MAX_DEPTH = 16
MAX_ITEMS = 2000
ANONYMOUS = ""
"""The rate-limit key shared by requests that name no ``client``."""


class CommandArgs(BaseModel):
    """Base of every command's arguments: strict, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NoArgs(CommandArgs):
    pass


class SetProfileArgs(CommandArgs):
    name: str = Field(pattern=_NAME, description="Device profile name.")


class SnapshotArgs(CommandArgs):
    source: str | None = Field(default=None, pattern=_NAME, description="Source name.")
    max_bytes: int = Field(default=128 * 1024, ge=4096, le=4 << 20, description="JPEG cap.")
    quality: int = Field(default=85, ge=20, le=95, description="Starting JPEG quality.")


class CalibCollectArgs(CommandArgs):
    model: str = Field(pattern=_NAME, description="Model whose calib/<model>/ gets the frames.")
    count: int = Field(default=32, ge=1, le=4096, description="Frames to save.")
    source: str | None = Field(default=None, pattern=_NAME, description="Source name.")


class RollbackArgs(CommandArgs):
    model: str | None = Field(default=None, pattern=_NAME, description="Model name.")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, description="Request id (idempotency key)."
    )
    client: str | None = Field(
        default=None, pattern=_CLIENT, description="Sender id: the per-client rate-limit key."
    )
    expires: float | None = Field(default=None, gt=0, description="Epoch seconds.")
    ts: float | None = Field(default=None, gt=0, description="Issue time, epoch seconds.")
    ttl_s: float | None = Field(default=None, gt=0, le=86400, description="Lifetime from ts.")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments.")

    @field_validator("id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("the id must be printable text")
        return value

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


@dataclass(eq=False)
class Refused(Exception):
    """A request refused before it runs: the error response and the warning to log.

    ``remember``: store the refusal under the request id (an expired request is answered the
    same way when repeated). ``log_message`` None: nothing is logged. ``reason``: the finer
    counter label (the :class:`JsonRejected` reason of an unreadable request).
    """

    code: str
    message: str
    request_id: str | None = None
    log_message: str | None = None
    log_extra: dict[str, Any] = field(default_factory=dict)
    remember: bool = False
    reason: str | None = None


def validation_text(err: ValidationError) -> str:
    """The first three problems of ``err`` as ``loc: msg; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()[:3]
    )


def command_json_limits(max_bytes: int) -> JsonLimits:
    """The bounds every request is parsed within."""
    return JsonLimits(max_bytes=max_bytes, max_depth=MAX_DEPTH, max_items=MAX_ITEMS)


def parse_json(name: str, payload: bytes, max_bytes: int) -> Any:
    """The decoded JSON of a request, bounded in size, depth and items before parsing;
    :class:`Refused` (``too_large`` or ``bad_json``, ``reason`` the :class:`JsonRejected` one)."""
    try:
        return loads_bounded(payload, command_json_limits(max_bytes))
    except JsonRejected as err:
        code = "too_large" if err.reason == "too_large" else "bad_json"
        raise Refused(
            code,
            f"request refused: {err}",
            log_message="command refused: unreadable",
            log_extra={"command": name, "reason": err.reason, "size": len(payload)},
            reason=err.reason,
        ) from err


def request_id(raw: Any) -> str | None:
    """The request's ``id`` when it is a usable idempotency key (before full validation):
    printable text of 1 to 128 characters, echoed unchanged in the response."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    usable = isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS and rid.isprintable()
    return rid if usable else None


def request_client(raw: Any) -> str:
    """The request's ``client`` (the rate-limit key) when well formed, else :data:`ANONYMOUS`."""
    client = raw.get("client") if isinstance(raw, dict) else None
    return client if isinstance(client, str) and _CLIENT_RE.fullmatch(client) else ANONYMOUS


def parse_request(name: str, raw: Any, rid: str | None, now: float) -> Request:
    """The validated, unexpired :class:`Request`; :class:`Refused` otherwise."""
    try:
        request = Request.model_validate(raw)
    except ValidationError as err:
        msg = validation_text(err)
        raise Refused(
            "bad_request",
            msg,
            request_id=rid,
            log_message="command refused: bad request",
            log_extra={"command": name, "error": msg},
        ) from err
    if request.deadline < now:
        raise Refused(
            "expired",
            "request expired",
            request_id=request.id,
            log_message="command refused: expired",
            log_extra={"id": request.id, "command": name, "expired_at": request.deadline},
            remember=True,
        )
    return request


def parse_args(name: str, request: Request, args: type[CommandArgs]) -> CommandArgs:
    """The command's validated arguments; :class:`Refused` (``bad_args``) otherwise."""
    try:
        return args.model_validate(request.args)
    except ValidationError as err:
        msg = validation_text(err)
        raise Refused(
            "bad_args",
            msg,
            request_id=request.id,
            log_message="command refused: bad args",
            log_extra={"id": request.id, "command": name, "error": msg},
        ) from err
