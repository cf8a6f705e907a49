"""A threading HTTP server with a cap on the connections it serves at once.

:class:`~http.server.ThreadingHTTPServer` starts a thread per connection without a bound, so a
burst of clients (a thousand devices downloading, a script hammering the API) would start a
thread each. :class:`CappedHTTPServer` serves at most ``max_connections`` at a time and answers
the ones beyond with ``503`` and ``Retry-After`` at once, on the accepting thread, without
reading their request.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.core.errors import EdgeAgentError

__all__ = ["Background", "CappedHTTPServer"]

_BUSY = json.dumps(
    {"error": {"code": "unavailable", "message": "too many connections", "fix": "retry later"}}
).encode()


class CappedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving at most ``max_connections`` connections at once."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = 64,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._slots.release()
                raise
            return
        self.refused += 1
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(_BUSY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            sock: socket.socket = request
            sock.settimeout(1.0)
            sock.sendall(head.encode() + _BUSY)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Background:
    """One server answering from its own thread: :meth:`start` binds (a clear error naming
    ``what`` and the config key when the address is taken), :meth:`stop` shuts it down."""

    def __init__(self, what: str, key: str) -> None:
        self.what, self.key = what, key
        self.server: CappedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, make: Callable[[], CappedHTTPServer], host: str, port: int) -> int:
        """Bind with ``make()`` and serve; returns the port bound."""
        try:
            self.server = make()
        except OSError as exc:
            raise EdgeAgentError(
                f"the {self.what} cannot listen on {host}:{port}: {exc}",
                fix=f"choose another {self.key}.port (0 picks a free one) or {self.key}.host, "
                "or stop what holds the port",
            ) from exc
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"fleet-{self.key}", daemon=True
        )
        self._thread.start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
