"""The API's routes: the :class:`ApiBackend` port the controller implements, the JSON routes
(method, path pattern, call) and their query arguments; :class:`ApiError` for every answer other
than 200 (see :mod:`.api` for the list)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.fleet.controller.stream import StreamClient

__all__ = [
    "CONTROL_OPS",
    "ROUTES",
    "ApiBackend",
    "ApiError",
    "JsonObject",
    "match_route",
    "parse_query",
]

JsonObject = dict[str, Any]
CONTROL_OPS = ("pause", "resume", "abort")


class ApiError(Exception):
    """An answer other than 200: HTTP status, stable code, message and fix."""

    def __init__(self, status: int, code: str, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fix = fix

    def body(self) -> JsonObject:
        return {"error": {"code": self.code, "message": self.message, "fix": self.fix}}


class ApiBackend(Protocol):
    """What the API serves (the controller implements it). Raise :class:`ApiError` for 404/409,
    :class:`EdgeAgentError` for a request that cannot be done (400 with its fix)."""

    def health(self) -> JsonObject: ...

    def devices(self) -> list[JsonObject]: ...

    def device(self, device_id: str) -> JsonObject: ...

    def summary(self) -> JsonObject: ...

    def history(self, device_id: str, seconds: int) -> JsonObject: ...

    def events(self, device_id: str, limit: int) -> JsonObject: ...

    def ota(self, device_id: str) -> JsonObject: ...

    def stream_subscribe(self) -> StreamClient | None:
        """A live-stream client, None when the most are connected."""
        ...

    def stream_unsubscribe(self, client: StreamClient) -> None: ...

    def metrics_text(self) -> bytes: ...

    def rollouts(self) -> list[JsonObject]: ...

    def rollout(self, rollout_id: str) -> JsonObject: ...

    def start_rollout(self, body: JsonObject) -> JsonObject: ...

    def control(self, rollout_id: str, op: str) -> JsonObject: ...


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    call: Callable[[ApiBackend, re.Match[str], JsonObject], tuple[int, JsonObject]]


def _int_arg(args: JsonObject, name: str, default: int, low: int, high: int) -> int:
    text = args.get(name)
    if text is None:
        return default
    if not isinstance(text, str) or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(
            400, "invalid", f"{name} must be a whole number from {low} to {high}", f"pass ?{name}=N"
        )
    return int(text)


_ID = r"([a-z0-9][a-z0-9._-]{0,62})"
_DAY_S = 86400
ROUTES: tuple[Route, ...] = (
    Route("GET", re.compile(r"/api/health"), lambda b, m, _: (200, b.health())),
    Route("GET", re.compile(r"/api/summary"), lambda b, m, _: (200, b.summary())),
    Route(
        "GET",
        re.compile(rf"/api/devices/{_ID}/history"),
        lambda b, m, q: (200, b.history(m[1], _int_arg(q, "seconds", 3600, 1, 7 * _DAY_S))),
    ),
    Route(
        "GET",
        re.compile(rf"/api/devices/{_ID}/events"),
        lambda b, m, q: (200, b.events(m[1], _int_arg(q, "limit", 100, 1, 200))),
    ),
    Route("GET", re.compile(rf"/api/devices/{_ID}/ota"), lambda b, m, _: (200, b.ota(m[1]))),
    Route("GET", re.compile(r"/api/devices"), lambda b, m, _: (200, {"devices": b.devices()})),
    Route("GET", re.compile(rf"/api/devices/{_ID}"), lambda b, m, _: (200, b.device(m[1]))),
    Route("GET", re.compile(r"/api/rollouts"), lambda b, m, _: (200, {"rollouts": b.rollouts()})),
    Route("GET", re.compile(rf"/api/rollouts/{_ID}"), lambda b, m, _: (200, b.rollout(m[1]))),
    Route("POST", re.compile(r"/api/rollouts"), lambda b, m, body: (201, b.start_rollout(body))),
    Route(
        "POST",
        re.compile(rf"/api/rollouts/{_ID}/({'|'.join(CONTROL_OPS)})"),
        lambda b, m, _: (200, b.control(m[1], m[2])),
    ),
)


def match_route(method: str, path: str) -> tuple[Route, re.Match[str]]:
    allowed: list[str] = []
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.method == method:
            return route, found
        allowed.append(route.method)
    if allowed:
        raise ApiError(
            405,
            "method_not_allowed",
            f"{method} is not allowed on {path}",
            f"use {' or '.join(sorted(set(allowed)))}",
        )
    raise ApiError(404, "not_found", "no such endpoint", "see the API list in the docs")


def parse_query(query: str) -> JsonObject:
    try:
        pairs = urllib.parse.parse_qsl(query[:2048], max_num_fields=16)
    except ValueError as exc:
        raise ApiError(400, "invalid", "too many query parameters", "pass at most 16") from exc
    return dict(pairs)
