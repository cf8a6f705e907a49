"""The HTTP client of the fleet controller's API (what ``edge-agent fleet ...`` uses).

:class:`FleetClient` speaks the JSON API documented in :mod:`agent.fleet.controller.api`. Every
failure is a :class:`FleetApiError` (an :class:`~agent.core.errors.EdgeAgentError`) carrying the
server's message and fix, or a network diagnosis; responses are read within a size bound and
parsed with :func:`~agent.core.jsonlimits.loads_bounded`.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.core.errors import EdgeAgentError
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text

__all__ = [
    "API_ENV",
    "DEFAULT_API",
    "TOKEN_ENV",
    "FleetApiError",
    "FleetClient",
    "read_token",
]

DEFAULT_API = "http://127.0.0.1:8780"
API_ENV = "EDGE_AGENT_FLEET_API"
TOKEN_ENV = "EDGE_AGENT_FLEET_TOKEN"
MAX_RESPONSE = 64 * 1024 * 1024
_LIMITS = JsonLimits(max_bytes=MAX_RESPONSE, max_depth=32, max_items=5_000_000)
_MAX_TOKEN = 4096


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects; following one would hand the token to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


class FleetApiError(EdgeAgentError):
    """The controller refused a request, or could not be reached. ``status`` is the HTTP status
    (0: no answer) and ``code`` the API's error code."""

    def __init__(self, message: str, *, fix: str | None = None, status: int = 0, code: str = ""):
        self.status = status
        self.code = code
        super().__init__(message, fix=fix)


def read_token(token_file: Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: ``token_file``'s first line, else ``$EDGE_AGENT_FLEET_TOKEN``."""
    if token_file is not None:
        try:
            with token_file.open("rb") as f:
                raw = f.read(_MAX_TOKEN + 1)
        except OSError as exc:
            raise EdgeAgentError(
                f"cannot read the token file: {exc.strerror or exc}",
                fix="pass --token-file pointing at the file holding the controller's API token",
                path=token_file,
            ) from exc
        lines = raw[:_MAX_TOKEN].decode("utf-8", "replace").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise EdgeAgentError(
                "the token file is empty", fix="write the token into it", path=token_file
            )
        return token
    value = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return value or None


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EdgeAgentError(
            f"{sanitize_text(url)!r} is not an http(s) URL of the controller API",
            fix=f"pass --api http://HOST:PORT (default {DEFAULT_API}, or set {API_ENV})",
        )
    return url.rstrip("/")


START_TIMEOUT_S = 300.0
"""How long ``rollout start`` waits: signing a manifest per device of a large fleet takes a while
(about 0.6 ms a device here)."""


class FleetClient:
    """``FleetClient(url, token).get("/api/devices")`` → the decoded JSON object."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 15.0) -> None:
        self.url = _check_url(url)
        self.token = token
        self.timeout_s = timeout_s

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path, None)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if self.token is None:
            raise FleetApiError(
                "changing the fleet needs the controller's API token",
                fix=f"pass --token-file FILE or set {TOKEN_ENV}",
                code="unauthorized",
            )
        return self._request("POST", path, json.dumps(dict(body or {})).encode())

    # -- typed shortcuts used by the CLI

    def devices(self) -> list[dict[str, Any]]:
        return list(self.get("/api/devices").get("devices", []))

    def rollouts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/rollouts").get("rollouts", []))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self.get(f"/api/rollouts/{urllib.parse.quote(rollout_id, safe='')}")

    def start_rollout(self, spec: Mapping[str, Any], key_path: Path) -> dict[str, Any]:
        """Start one; the controller signs a manifest per device before it answers, so this
        waits longer than other requests (``START_TIMEOUT_S``)."""
        body = json.dumps({"spec": dict(spec), "key_path": str(key_path)}).encode()
        if self.token is None:
            return self.post("/api/rollouts", None)  # the clear "needs the token" error
        return self._request("POST", "/api/rollouts", body, timeout_s=START_TIMEOUT_S)

    def control(self, rollout_id: str, op: str) -> dict[str, Any]:
        return self.post(f"/api/rollouts/{urllib.parse.quote(rollout_id, safe='')}/{op}")

    def _request(
        self, method: str, path: str, data: bytes | None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=timeout_s or self.timeout_s) as response:
                return self._decode(response.read(MAX_RESPONSE + 1), response.status)
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except TimeoutError:
            raise FleetApiError(
                f"the fleet controller at {self.url} did not answer {method} {path} within "
                f"{timeout_s or self.timeout_s:g} s",
                fix="check its log (it may be overloaded or its store unreachable) and retry",
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FleetApiError(
                f"cannot reach the fleet controller at {self.url}: {reason}",
                fix=f"start it (`edge-agent fleet serve --config fleet.yaml`) or pass --api "
                f"URL / set {API_ENV}",
            ) from None

    def _decode(self, raw: bytes, status: int) -> dict[str, Any]:
        try:
            doc = loads_bounded(raw, _LIMITS)
        except JsonRejected as exc:
            raise FleetApiError(
                f"the controller answered {status} with unreadable JSON ({exc.reason})",
                fix="check that --api points at an edge-agent fleet controller",
                status=status,
            ) from None
        if not isinstance(doc, dict):
            raise FleetApiError(
                f"the controller answered {status} with JSON that is not an object",
                fix="check that --api points at an edge-agent fleet controller",
                status=status,
            )
        return doc  # pyright: ignore[reportUnknownVariableType]

    def _refused(self, exc: urllib.error.HTTPError) -> FleetApiError:
        try:
            doc = self._decode(exc.read(MAX_RESPONSE + 1), exc.code)
        except FleetApiError:
            doc = {}
        error = doc.get("error")
        if isinstance(error, dict):
            message = sanitize_text(error.get("message", ""), max_len=500)  # pyright: ignore[reportUnknownMemberType]
            fix = sanitize_text(error.get("fix", ""), max_len=500) or None  # pyright: ignore[reportUnknownMemberType]
            code = sanitize_text(error.get("code", ""), max_len=64)  # pyright: ignore[reportUnknownMemberType]
            return FleetApiError(message or f"HTTP {exc.code}", fix=fix, status=exc.code, code=code)
        return FleetApiError(
            f"the controller answered HTTP {exc.code} {sanitize_text(exc.reason)}",
            fix="check that --api points at an edge-agent fleet controller",
            status=exc.code,
        )
