"""Serve a push's files over HTTP from a background thread (``edge-agent push --serve``).

:class:`BundleServer` serves exactly the listed files (loopback by default) under a random URL
prefix; the OTA tests use it as the download server.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.core.errors import OtaError
from agent.core.logs import log_fields

__all__ = ["BundleServer"]

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # pyright: ignore[reportIncompatibleVariableOverride]

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        prefix = f"/{self.server.token}/"
        source = None
        if path.startswith(prefix):
            source = self.server.files.get(path[len(prefix) :])
        if source is None:
            self.send_error(404, "not part of this push")
            return
        try:
            data = source.read_bytes()
        except OSError:
            self.send_error(500, "cannot read the file")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.served.append(path[len(prefix) :])

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("push server: " + format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], files: Mapping[str, Path], token: str):
        self.files = dict(files)
        self.token = token
        self.served: list[str] = []
        super().__init__(address, _Handler)


class BundleServer:
    """Serve ``files`` (relative path → local file) over HTTP from a background thread.

    ``with BundleServer(files) as server: server.base_url`` — bound to 127.0.0.1 and a free
    port by default; only the listed files are served, under a random path prefix.
    """

    def __init__(
        self,
        files: Mapping[str, Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
    ):
        self.files = dict(files)
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self.token = secrets.token_hex(8)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BundleServer:
        try:
            self._server = _Server((self.host, self.port), self.files, self.token)
        except OSError as exc:
            raise OtaError(
                f"cannot listen on {self.host}:{self.port}: {exc}",
                reason="usage",
                fix="choose another --port (0 picks a free one) or --host",
            ) from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ota-push-server", daemon=True
        )
        self._thread.start()
        log.info("push server started", extra=log_fields(url=self.base_url))
        return self

    @property
    def base_url(self) -> str:
        host = self.advertise_host or self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/{self.token}"

    @property
    def served(self) -> list[str]:
        return [] if self._server is None else list(self._server.served)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def serve_for(self, seconds: float) -> None:
        """Block while serving, for ``seconds`` (KeyboardInterrupt passes through)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def __enter__(self) -> BundleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
