"""One HTTP(S) GET under one wall-clock deadline: name lookup, connect, TLS handshake, request,
status line, headers and every body read all end by the same ``time.monotonic()`` instant.

A socket timeout bounds one operation, not a download: a server that sends one byte of its
headers every 2 s never trips a 10 s timeout (``urllib.request``, ``http.client`` and urllib3's
``Timeout(total=...)`` all re-arm it per read). So :mod:`http.client` (status line, headers,
chunked bodies, header limits) reads through :class:`_DeadlineReader`, which sets the socket's
timeout to the time left before *every* receive; the lookup runs in a daemon thread waited on
until the deadline; connect, the TLS handshake and ``sendall`` each get the time left, which
CPython applies to the whole call. Past the deadline every step raises :class:`TimeoutError`.

TLS verification is the caller's :class:`ssl.SSLContext` (default: the system trust store,
hostname checked). Redirects (at most :data:`MAX_REDIRECTS`) share the deadline; userinfo in a
URL becomes basic authentication, sent only to the URL's own host. Environment proxies are not
used.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_REDIRECTS", "Deadline", "HttpStatusError", "http_get"]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Deadline:
    """A ``time.monotonic()`` instant every step of one download must finish by."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds left (> 0); :class:`TimeoutError` once the deadline has passed."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the download deadline passed")
        return remaining


class HttpStatusError(OSError):
    """The server answered with a status other than 200 (after redirects)."""

    def __init__(self, status: int, reason: str):
        self.status = status
        super().__init__(f"HTTP {status} {reason}".strip())


class _DeadlineReader(io.RawIOBase):
    """The response's byte source: each receive waits at most until the deadline.

    ``keep`` is the file :class:`http.client.HTTPResponse` made from the socket: holding it
    open keeps the socket alive after the connection object lets go of it (as the stdlib's
    own reader does); it is closed with this reader."""

    def __init__(self, sock: socket.socket, deadline: Deadline, keep: Any):
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._keep = keep

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._keep.close()
        super().close()


def _response_class(deadline: Deadline) -> type[http.client.HTTPResponse]:
    class _Response(http.client.HTTPResponse):
        def __init__(
            self,
            sock: socket.socket,
            debuglevel: int = 0,
            method: str | None = None,
            url: str | None = None,
        ):
            super().__init__(sock, debuglevel, method, url)
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline, self.fp))

    return _Response


def _resolve(host: str, port: int, deadline: Deadline) -> list[Any]:
    """``getaddrinfo`` has no timeout: run it in a daemon thread and wait until the deadline
    (a lookup left behind ends with the resolver's own timeout)."""
    found: list[Any] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=lookup, name="ota-dns", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if thread.is_alive():
        raise TimeoutError(f"the name lookup of {host} did not finish by the deadline")
    if failed:
        raise failed[0]
    return found


def _connect(host: str, port: int, deadline: Deadline) -> socket.socket:
    last: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _name, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
        except TimeoutError as exc:
            sock.close()
            raise TimeoutError(f"no TCP connection to {host}:{port} by the deadline") from exc
        except OSError as exc:
            sock.close()
            last = exc
        else:
            return sock
    raise last


class _Connection(http.client.HTTPConnection):
    """One request; every socket step under ``deadline``; TLS when ``tls`` is given."""

    def __init__(
        self, host: str, port: int, deadline: Deadline, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port, timeout=deadline.left())
        self.deadline = deadline
        self.tls = tls
        self.response_class = _response_class(deadline)

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self.deadline)
        try:
            if self.tls is not None:
                sock.settimeout(self.deadline.left())  # the whole handshake, not one read
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.deadline.left())
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self.deadline.left())
        super().send(data)


def _request(
    url: str, deadline: Deadline, tls: ssl.SSLContext | None, auth: str | None
) -> tuple[_Connection, http.client.HTTPResponse]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = (tls or ssl.create_default_context()) if secure else None
    conn = _Connection(parts.hostname, port, deadline, context)
    headers = {"User-Agent": "edge-agent", "Connection": "close"}
    if auth is not None:
        headers["Authorization"] = auth
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        conn.request("GET", target, headers=headers)
        try:
            return conn, conn.getresponse()
        except TimeoutError as exc:
            raise TimeoutError("no complete status line and headers by the deadline") from exc
    except BaseException:
        conn.close()
        raise


def _basic_auth(url: str) -> str | None:
    """The Authorization header for the userinfo of ``url`` (None without one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return None
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


@contextmanager
def http_get(
    url: str, deadline: Deadline, *, tls: ssl.SSLContext | None = None
) -> Iterator[http.client.HTTPResponse]:
    """The 200 response to ``GET url`` (redirects followed), its body to be read before
    ``deadline`` like everything before it. Raises :class:`TimeoutError` past the deadline,
    :class:`HttpStatusError` for another status, ``OSError``/``ssl.SSLError``/
    ``http.client.HTTPException``/``ValueError`` for the rest."""
    auth_host, auth = _host(url), _basic_auth(url)
    conn, response = _request(url, deadline, tls, auth)
    try:
        for _ in range(MAX_REDIRECTS):
            location = response.getheader("Location")
            if response.status not in _REDIRECTS or not location:
                break
            response.close()
            conn.close()
            url = urllib.parse.urljoin(url, location)
            conn, response = _request(url, deadline, tls, auth if _host(url) == auth_host else None)
        if response.status != 200:
            raise HttpStatusError(response.status, response.reason)
        yield response
    finally:
        response.close()
        conn.close()
