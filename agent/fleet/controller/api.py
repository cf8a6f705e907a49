"""The controller's HTTP JSON API (stdlib :class:`~http.server.ThreadingHTTPServer`).

Reads need no credentials; every POST needs ``Authorization: Bearer <token>`` (``api.token_file``
or ``api.token_env``; without a configured token every POST is refused with 403). Bodies are
JSON objects of at most ``api.max_body_kib`` KiB (413 beyond, refused before they are read).
Every response is a JSON object; this is the contract the CLI and the dashboard use:

=======  ==================================  =============================================
method   path                                200 response
=======  ==================================  =============================================
GET      ``/api/health``                     ``{"ok", "fleet", "instance", "store",
                                             "mqtt": {"connected"}, "ingest": {...},
                                             "bundle_url", "rollouts_active"}``
GET      ``/api/devices``                    ``{"devices": [device, ...]}`` (sorted by id)
GET      ``/api/devices/<id>``               ``device``
GET      ``/api/rollouts``                   ``{"rollouts": [status, ...]}`` (newest first)
GET      ``/api/rollouts/<id>``              ``status``
POST     ``/api/rollouts``                   ``status`` (201) — body ``{"spec": RolloutSpec,
                                             "key_path": "<private key on the controller>"}``
POST     ``/api/rollouts/<id>/pause``        ``status`` (also ``resume``, ``abort``)
=======  ==================================  =============================================

``device`` is :meth:`DeviceRecord.to_json` plus ``seen_ago_s`` (seconds since the last message)
and ``online`` derived: the device said it is online and was heard from within
``rollouts.offline_after_s``. ``status`` is :meth:`Rollout.status_json` (id, fleet, state, model,
version, counts, waves, devices, abort_reason, tripped, spec, ...).

Errors: ``{"error": {"code", "message", "fix"}}`` with 400 (``bad_json``, ``invalid``), 401
(``unauthorized``), 403 (``read_only``), 404 (``not_found``), 405 (``method_not_allowed``), 409
(``conflict``), 411 (``length_required``), 413 (``too_large``), 500 (``internal``), 503
(``unavailable``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from agent.config.fleet import ApiConfig
from agent.core.errors import EdgeAgentError
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text
from agent.core.logs import log_fields
from agent.fleet.controller.auth import bearer_matches
from agent.fleet.controller.httpcap import Background, CappedHTTPServer

__all__ = ["ApiBackend", "ApiError", "ApiServer"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
"""The most API requests served at once; more get 503 with Retry-After at once."""

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

    def rollouts(self) -> list[JsonObject]: ...

    def rollout(self, rollout_id: str) -> JsonObject: ...

    def start_rollout(self, body: JsonObject) -> JsonObject: ...

    def control(self, rollout_id: str, op: str) -> JsonObject: ...


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    call: Callable[[ApiBackend, re.Match[str], JsonObject], tuple[int, JsonObject]]


_ID = r"([a-z0-9][a-z0-9._-]{0,62})"
ROUTES: tuple[_Route, ...] = (
    _Route("GET", re.compile(r"/api/health"), lambda b, m, _: (200, b.health())),
    _Route("GET", re.compile(r"/api/devices"), lambda b, m, _: (200, {"devices": b.devices()})),
    _Route("GET", re.compile(rf"/api/devices/{_ID}"), lambda b, m, _: (200, b.device(m[1]))),
    _Route("GET", re.compile(r"/api/rollouts"), lambda b, m, _: (200, {"rollouts": b.rollouts()})),
    _Route("GET", re.compile(rf"/api/rollouts/{_ID}"), lambda b, m, _: (200, b.rollout(m[1]))),
    _Route("POST", re.compile(r"/api/rollouts"), lambda b, m, body: (201, b.start_rollout(body))),
    _Route(
        "POST",
        re.compile(rf"/api/rollouts/{_ID}/({'|'.join(CONTROL_OPS)})"),
        lambda b, m, _: (200, b.control(m[1], m[2])),
    ),
)


def _match(method: str, path: str) -> tuple[_Route, re.Match[str]]:
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


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # pyright: ignore[reportIncompatibleVariableOverride]
    timeout = 15
    server_version = "edge-agent-fleet"
    sys_version = ""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        try:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            route, found = _match(method, path)
            body: JsonObject = {}
            if method == "POST":
                self._authorize()
                body = self._body()
            status, doc = route.call(self.server.backend, found, body)
        except ApiError as exc:
            self._reply(exc.status, exc.body(), close=exc.status in (411, 413))
            return
        except EdgeAgentError as exc:
            error = ApiError(400, "invalid", exc.message, exc.fix or "")
            self._reply(400, error.body())
            return
        except Exception:
            log.exception("API request failed", extra=log_fields(method=method))
            error = ApiError(
                500, "internal", "the controller failed on this request", "see the controller's log"
            )
            self._reply(500, error.body())
            return
        self._reply(status, doc)

    def _authorize(self) -> None:
        token = self.server.token
        if token is None:
            raise ApiError(
                403,
                "read_only",
                "this controller has no API token configured, so it accepts no changes",
                "set api.token_file or api.token_env in fleet.yaml and restart the controller",
            )
        if not bearer_matches(self.headers.get("Authorization"), token):
            raise ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required",
                "pass --token-file FILE or set EDGE_AGENT_FLEET_TOKEN to the controller's token",
            )

    def _body(self) -> JsonObject:
        if self.headers.get("Transfer-Encoding") is not None:
            raise ApiError(
                411,
                "length_required",
                "chunked bodies are not accepted",
                "send the body with a Content-Length",
            )
        text = self.headers.get("Content-Length")
        if text is None or not text.strip().isdigit():
            raise ApiError(
                411,
                "length_required",
                "a POST needs a Content-Length",
                "send a JSON object body (may be {})",
            )
        length = int(text)
        limit = self.server.max_body
        if length > limit:
            raise ApiError(
                413,
                "too_large",
                f"the body is {length} bytes; at most {limit}",
                "send a smaller request",
            )
        raw = self.rfile.read(length) if length else b"{}"
        try:
            doc = loads_bounded(raw, JsonLimits(max_bytes=limit, max_depth=16, max_items=4096))
        except JsonRejected as exc:
            raise ApiError(
                400,
                "bad_json",
                f"the body is not acceptable JSON: {exc.reason}",
                "send one JSON object",
            ) from exc
        if not isinstance(doc, dict):
            raise ApiError(
                400, "bad_json", "the body must be a JSON object", "send one JSON object"
            )
        return doc  # pyright: ignore[reportUnknownVariableType]

    def _reply(self, status: int, doc: JsonObject, *, close: bool = False) -> None:
        data = (json.dumps(doc, separators=(",", ":"), default=str) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="edge-agent-fleet"')
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + sanitize_text(format % args, max_len=300))


class _Server(CappedHTTPServer):
    def __init__(
        self, address: tuple[str, int], backend: ApiBackend, token: str | None, max_body: int
    ) -> None:
        self.backend = backend
        self.token = token
        self.max_body = max_body
        super().__init__(address, _Handler, max_connections=MAX_CONNECTIONS)


class ApiServer:
    """The API on ``api.host:api.port`` in a background thread (``start`` / ``stop``)."""

    def __init__(self, cfg: ApiConfig, backend: ApiBackend, token: str | None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.token = token
        self.port = cfg.port
        self._bg = Background("API", "api")

    def start(self) -> None:
        cfg = self.cfg
        self.port = self._bg.start(
            lambda: _Server(
                (cfg.host, cfg.port), self.backend, self.token, cfg.max_body_kib * 1024
            ),
            cfg.host,
            cfg.port,
        )
        log.info(
            "fleet API listening", extra=log_fields(url=self.url, read_only=self.token is None)
        )

    @property
    def url(self) -> str:
        host = self.cfg.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._bg.stop()
