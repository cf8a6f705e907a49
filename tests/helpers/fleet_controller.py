"""A real fleet controller for tests: SQLite store in ``tmp_path``, a real broker, loopback HTTP
servers on free ports, and a small raw HTTP client (so tests see status codes and headers)."""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.config.fleet import FleetConfig
from agent.fleet.controller.service import FleetController


def write_token(directory: Path) -> tuple[Path, str]:
    """A random API token in ``directory/api.token`` (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(24)
    path = directory / "api.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path, token


def fleet_config(
    base: Path, broker_url: str, *, fleet: str, token_file: Path | None, **changes: Any
) -> FleetConfig:
    """A controller config: store and state under ``base``, API and bundle server on free
    loopback ports, fast ticks."""
    fields: dict[str, Any] = {
        "fleet": fleet,
        "mqtt": {"enabled": True, "url": broker_url, "reconnect_min_s": 0.2},
        "store": {"kind": "sqlite", "path": str(base / "fleet.db")},
        "api": {"host": "127.0.0.1", "port": 0, "token_file": token_file},
        "bundle_server": {"host": "127.0.0.1", "port": 0},
        "state_dir": str(base / "state"),
        "instance_id": "ctl-test",
        "tick_s": 0.2,
    }
    fields.update(changes)
    return FleetConfig.model_validate(fields)


@contextlib.contextmanager
def running(cfg: FleetConfig, base: Path) -> Iterator[FleetController]:
    controller = FleetController(cfg, base).start()
    try:
        assert controller.wait_connected(10), "controller did not connect to the broker"
        yield controller
    finally:
        controller.stop()


def request(
    url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    """One HTTP request; (status, JSON body, headers)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}, response.headers
    finally:
        conn.close()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, step: float = 0.1) -> Any:
    """``predicate()``'s first truthy value within ``timeout_s``; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step)
