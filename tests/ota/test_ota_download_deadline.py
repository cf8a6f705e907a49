"""One deadline over name lookup, connect, TLS, headers and body of a download (issue #14 item 4):
real sockets on loopback, servers that trickle or stall at each step, and the updater taking
the next push after a download timed out."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import OtaError, OtaRejected
from agent.ota.fetch import download_budget_s, download_file
from agent.ota.manifest import FileEntry
from tests.helpers.broker import make_pki

TIMEOUT_S = 3.0  # ota.download_timeout_s of these tests; the bound is deadline + 2 s
BODY = b"edge-agent bundle bytes\n" * 4

Handler = Callable[[socket.socket, threading.Event], None]


def _entry(data: bytes = BODY) -> FileEntry:
    return FileEntry(path="blob", sha256=hashlib.sha256(data).hexdigest(), size=len(data))


@contextmanager
def raw_server(handle: Handler) -> Iterator[int]:
    """A TCP server on 127.0.0.1 (yields its port): each connection goes to ``handle`` on its
    own thread, with an event set when the test is over."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=_run, args=(handle, conn, done), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(2)
        listener.close()


def _run(handle: Handler, conn: socket.socket, done: threading.Event) -> None:
    with conn, suppress(OSError):
        handle(conn, done)


def trickle(data: bytes, every_s: float = 2.0, *, read_first: bool = True) -> Handler:
    """Read the request (or ClientHello), then send ``data`` one byte every ``every_s``."""

    def handle(conn: socket.socket, done: threading.Event) -> None:
        if read_first:
            conn.recv(65536)
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])
            if done.wait(every_s):
                return

    return handle


def silent(conn: socket.socket, done: threading.Event) -> None:
    """Accept, then never answer."""
    del conn
    done.wait(60)


def respond(payload: bytes) -> Handler:
    def handle(conn: socket.socket, done: threading.Event) -> None:
        del done
        conn.recv(65536)
        conn.sendall(payload)

    return handle


def _fails_within_deadline(url: str, tmp_path: Path, **kw: Any) -> OtaError:
    entry = _entry()
    dest = tmp_path / "stage" / "blob"
    started = time.monotonic()
    with pytest.raises(OtaError) as info:
        download_file(url, entry, dest, timeout_s=TIMEOUT_S, **kw)
    elapsed = time.monotonic() - started
    assert elapsed <= download_budget_s(entry.size, TIMEOUT_S) + 2.0, elapsed
    assert not isinstance(info.value, OtaRejected)
    assert info.value.reason == "download_timeout", info.value
    assert info.value.fix and "download_timeout_s" in info.value.fix
    assert not dest.exists()
    return info.value


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % len(BODY)


def test_header_trickle_fails_by_the_deadline_with_credentials_redacted(tmp_path: Path) -> None:
    with raw_server(trickle(HEADERS)) as port:
        error = _fails_within_deadline(f"http://ops:s3cret@127.0.0.1:{port}/b/blob", tmp_path)
    text = str(error)
    assert f"127.0.0.1:{port}/b/blob" in text and "s3cret" not in text, text


def test_body_trickle_fails_by_the_deadline(tmp_path: Path) -> None:
    def handle(conn: socket.socket, done: threading.Event) -> None:
        respond(HEADERS)(conn, done)
        trickle(BODY, read_first=False)(conn, done)

    with raw_server(handle) as port:
        _fails_within_deadline(f"http://127.0.0.1:{port}/blob", tmp_path)


def test_server_that_accepts_and_never_answers(tmp_path: Path) -> None:
    with raw_server(silent) as port:
        _fails_within_deadline(f"http://127.0.0.1:{port}/blob", tmp_path)


# a TLS record header announcing a 16 KiB handshake record, then zeros: the client's TLS
# library waits for the rest of the record, one byte every 2 s
TLS_RECORD = b"\x16\x03\x03\x40\x00" + bytes(64)


def test_tls_handshake_stall_fails_by_the_deadline(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", [])
    client = ssl.create_default_context(cafile=str(pki.ca))
    with raw_server(trickle(TLS_RECORD)) as port:
        error = _fails_within_deadline(f"https://127.0.0.1:{port}/blob", tmp_path, tls=client)
    assert "handshake" in str(error), error


def test_name_lookup_that_hangs_fails_by_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "bundles.example":
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        error = _fails_within_deadline("http://bundles.example/blob", tmp_path)
    finally:
        release.set()
    assert "name lookup of bundles.example" in str(error)


class _Files(BaseHTTPRequestHandler):
    """A well-behaved server: the blob, the blob chunked, a redirect to it, the blob behind
    basic authentication, and 404 for the rest."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/moved":
            self._reply(302, b"", [("Location", "/blob")])
        elif self.path == "/blob" or (
            self.path == "/auth" and self.headers.get("Authorization") == _AUTH
        ):
            self._reply(200, BODY, [("Content-Length", str(len(BODY)))])
        elif self.path == "/chunked":
            half = len(BODY) // 2
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (BODY[:half], BODY[half:]))
            self._reply(200, body + b"0\r\n\r\n", [("Transfer-Encoding", "chunked")])
        else:
            self._reply(404, b"", [("Content-Length", "0")])

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


_AUTH = "Basic " + base64.b64encode(b"ops:s3cret").decode()


@contextmanager
def files_server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_normal_http_server_still_downloads_and_verifies(tmp_path: Path) -> None:
    with files_server() as port:
        base = f"http://127.0.0.1:{port}"
        for path in ("/blob", "/moved", "/chunked"):
            dest = tmp_path / path.strip("/")
            download_file(base + path, _entry(), dest, timeout_s=TIMEOUT_S)
            assert dest.read_bytes() == BODY, path
        download_file(
            f"http://ops:s3cret@127.0.0.1:{port}/auth", _entry(), tmp_path / "auth", timeout_s=5
        )
        assert (tmp_path / "auth").read_bytes() == BODY
        with pytest.raises(OtaError) as info:
            download_file(base + "/missing", _entry(), tmp_path / "missing", timeout_s=5)
        assert info.value.reason == "fetch_failed" and "HTTP 404" in str(info.value)
        wrong = FileEntry(path="blob", sha256="0" * 64, size=len(BODY))
        with pytest.raises(OtaRejected) as info:
            download_file(base + "/blob", wrong, tmp_path / "wrong", timeout_s=5)
        assert info.value.reason == "hash_mismatch" and not (tmp_path / "wrong").exists()


def test_https_download_verifies_the_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", [])
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    with files_server(server_tls) as port:
        url = f"https://127.0.0.1:{port}/blob"
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        download_file(url, _entry(), tmp_path / "blob", timeout_s=5, tls=trusted)
        assert (tmp_path / "blob").read_bytes() == BODY
        with pytest.raises(OtaError) as info:  # the system trust store does not know the CA
            download_file(url, _entry(), tmp_path / "untrusted", timeout_s=5)
        assert info.value.reason == "fetch_failed"
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        assert not (tmp_path / "untrusted").exists()
