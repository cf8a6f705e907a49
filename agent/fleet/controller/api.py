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
GET      ``/api/summary``                    ``{"fleet", "devices": {"total", "online",
                                             "offline", "degraded"}, "models": [{"name",
                                             "version", "precision", "devices"}],
                                             "rollouts": [status of planned|running|paused],
                                             "ts"}``
GET      ``/api/devices/<id>/history``       ``{"device", "seconds", "points": [{"ts", "fps",
                                             "latency_p50_ms", "power_w", "temp_max_c",
                                             "memory_used_pct"}]}`` oldest first, at most 360
                                             (``?seconds=3600``, 1 … 7 days)
GET      ``/api/devices/<id>/events``        ``{"device", "events": [{"ts", "kind", "data"}]}``
                                             newest first (``?limit=100``, 1 … 200)
GET      ``/api/devices/<id>/ota``           ``{"device", "updates": [OtaStatus, ...]}``
                                             newest first (one per update id, last 50)
GET      ``/api/rollouts``                   ``{"rollouts": [status, ...]}`` (newest first)
GET      ``/api/rollouts/<id>``              ``status``
POST     ``/api/rollouts``                   ``status`` (201) — body ``{"spec": RolloutSpec,
                                             "key_path": "<private key on the controller>"}``
POST     ``/api/rollouts/<id>/pause``        ``status`` (also ``resume``, ``abort``)
=======  ==================================  =============================================

Not JSON: ``GET /api/stream`` (server-sent events: ``device``, ``rollout``, ``summary``, ``:
ping``; see :mod:`.stream`; 503 beyond ``stream.max_clients``), ``GET /metrics`` (Prometheus
text, :mod:`.exposition`), ``GET /`` and ``GET /static/<name>`` (the dashboard, :mod:`.static`).

``device`` is :meth:`DeviceRecord.to_json` plus ``seen_ago_s`` (seconds since the last message)
and ``online`` derived: the device said it is online and was heard from within
``rollouts.offline_after_s``, ``status`` (``online|offline|degraded``) and flat display fields
(:func:`~.views.device_json`). A rollout's ``status`` is :meth:`Rollout.status_json` (id, fleet,
state, model, version, counts, waves, devices, abort_reason, tripped, spec, ...).

Errors: ``{"error": {"code", "message", "fix"}}`` with 400 (``bad_json``, ``invalid``), 401
(``unauthorized``), 403 (``read_only``), 404 (``not_found``), 405 (``method_not_allowed``), 409
(``conflict``), 411 (``length_required``), 413 (``too_large``), 500 (``internal``), 503
(``unavailable``).
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from agent.config.fleet import ApiConfig
from agent.core.errors import EdgeAgentError
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text
from agent.core.logs import log_fields
from agent.fleet.controller.auth import bearer_matches
from agent.fleet.controller.exposition import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.fleet.controller.httpcap import Background, CappedHTTPServer
from agent.fleet.controller.responses import send_bytes, send_stream
from agent.fleet.controller.routes import (
    ApiBackend,
    ApiError,
    JsonObject,
    match_route,
    parse_query,
)
from agent.fleet.controller.static import STATIC_DIR, StaticFiles

__all__ = ["ApiBackend", "ApiError", "ApiServer"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 96
"""The most API connections served at once (live streams hold one each: up to 32 of them plus
ordinary requests); more get 503 with Retry-After at once."""


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
            path, _, query = self.path.partition("?")
            path = path.rstrip("/") or "/"
            if method == "GET" and self._raw(path):
                return
            route, found = match_route(method, path)
            args: JsonObject = parse_query(query)
            if method == "POST":
                self._authorize()
                args = self._body()
            status, doc = route.call(self.server.backend, found, args)
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

    def _raw(self, path: str) -> bool:
        """Answer the paths that are not JSON; False for every other path."""
        backend = self.server.backend
        if path == "/api/stream":
            client = backend.stream_subscribe()
            if client is None:
                raise ApiError(
                    503,
                    "unavailable",
                    "too many live streams are connected",
                    "close other dashboard tabs, or raise stream.max_clients",
                )
            try:
                send_stream(self, client)
            finally:
                backend.stream_unsubscribe(client)
        elif path == "/metrics":
            send_bytes(self, backend.metrics_text(), METRICS_CONTENT_TYPE, cache="no-store")
        elif path == "/" or path.startswith("/static/"):
            name = "index.html" if path == "/" else path.removeprefix("/static/")
            found = self.server.static.get(name)
            if found is None:
                raise _missing_file(name, self.server.static)
            send_bytes(self, found.data, found.content_type, cache="no-cache")
        else:
            return False
        return True

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


def _missing_file(name: str, static: StaticFiles) -> ApiError:
    if name == "index.html":
        return ApiError(
            404,
            "not_found",
            f"the dashboard is not installed (no index.html in {static.root})",
            "reinstall edge-agent with its package data (agent/fleet/web/static)",
        )
    return ApiError(404, "not_found", "no such file", "see the dashboard at /")


class _Server(CappedHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        backend: ApiBackend,
        token: str | None,
        max_body: int,
        static: StaticFiles,
    ) -> None:
        self.backend = backend
        self.static = static
        self.token = token
        self.max_body = max_body
        super().__init__(address, _Handler, max_connections=MAX_CONNECTIONS)


class ApiServer:
    """The API on ``api.host:api.port`` in a background thread (``start`` / ``stop``)."""

    def __init__(
        self,
        cfg: ApiConfig,
        backend: ApiBackend,
        token: str | None,
        *,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.cfg = cfg
        self.static = StaticFiles(static_dir)
        self.backend = backend
        self.token = token
        self.port = cfg.port
        self._bg = Background("API", "api")

    def start(self) -> None:
        cfg = self.cfg
        self.port = self._bg.start(
            lambda: _Server(
                (cfg.host, cfg.port),
                self.backend,
                self.token,
                cfg.max_body_kib * 1024,
                self.static,
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
