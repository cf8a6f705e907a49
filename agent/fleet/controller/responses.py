"""The API's answers that are not one JSON object: the live stream (server-sent events), the
Prometheus text and the dashboard's files. Each writes on the request's handler."""

from __future__ import annotations

import logging
import select
import socket
from http.server import BaseHTTPRequestHandler

from agent.fleet.controller.stream import StreamClient

__all__ = ["send_bytes", "send_stream"]

log = logging.getLogger(__name__)

WAIT_S = 1.0
"""How long a stream waits for its next event before it looks for a stop."""


def send_bytes(
    handler: BaseHTTPRequestHandler, data: bytes, content_type: str, *, cache: str
) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Cache-Control", cache)
    handler.send_header("X-Content-Type-Options", "nosniff")
    handler.send_header("X-Frame-Options", "DENY")
    handler.end_headers()
    handler.wfile.write(data)


def send_stream(handler: BaseHTTPRequestHandler, client: StreamClient) -> None:
    """Answer with ``text/event-stream`` and write ``client``'s events until it is closed (feed
    stopped, client too slow) or the browser goes (a write fails or times out)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("X-Accel-Buffering", "no")
    handler.send_header("X-Content-Type-Options", "nosniff")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    try:
        handler.wfile.write(b"retry: 2000\n\n")
        handler.wfile.flush()
        while (chunk := client.next(WAIT_S)) is not None:
            if chunk:
                handler.wfile.write(chunk)
                handler.wfile.flush()
            elif _hung_up(handler.connection):
                return
    except OSError as exc:  # the browser went away, or stopped reading
        log.debug("live stream closed: %s", exc)


def _hung_up(conn: socket.socket) -> bool:
    """The browser closed its side (nothing it sends on a stream is read otherwise)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
