"""A small loopback MJPEG-over-HTTP server for tests (``multipart/x-mixed-replace``).

Every GET gets an endless multipart stream of JPEG frames drawn by :class:`SceneAnimator` at
``fps``. ``stop()`` closes the listening socket *and* every live connection, so a client sees
a real disconnect; ``start()`` again rebinds the same port, so a client can come back on its
own. ``pause()`` keeps connections open but sends nothing (a stall) until ``resume()``.
Authentication is ignored (a URL with ``user:secret@`` still gets frames).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from agent.vision.synthetic import SceneAnimator

BOUNDARY = "edgeagentframe"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: MjpegServer, port: int) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # pyright: ignore[reportIncompatibleVariableOverride]
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        return  # keep test output quiet

    def do_GET(self) -> None:
        owner = self.server.owner
        stop = owner._stop_event  # pyright: ignore[reportPrivateUsage]
        owner._track(self.connection)  # pyright: ignore[reportPrivateUsage]
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            animator = SceneAnimator(seed=owner.seed, width=owner.width, height=owner.height)
            period = 1.0 / owner.fps
            next_t = time.monotonic()
            while not stop.is_set():
                if owner.paused.is_set():  # connection stays open, no frames: a stall
                    stop.wait(0.02)
                    next_t = time.monotonic()
                    continue
                image, _ = animator.next_frame()
                ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
                if not ok:
                    return
                data = jpg.tobytes()
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                ).encode("ascii")
                self.wfile.write(head + data + b"\r\n")
                self.wfile.flush()
                owner.frames_sent += 1
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                else:
                    next_t = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
            return
        finally:
            owner._untrack(self.connection)  # pyright: ignore[reportPrivateUsage]


class MjpegServer:
    """``MjpegServer(fps=15).start()`` → ``url``; ``stop()``; ``start()`` again on the same port."""

    def __init__(
        self, *, fps: float = 15.0, width: int = 320, height: int = 240, seed: int = 7
    ) -> None:
        self.fps = fps
        self.width = width
        self.height = height
        self.seed = seed
        self.port = 0
        self.frames_sent = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.paused = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        if self._server is not None:
            return self
        self._stop_event = threading.Event()
        deadline = time.monotonic() + 5.0
        while True:  # the old port can stay busy for a moment after stop(); retry briefly
            try:
                server = _Server(self, self.port)
                break
            except OSError:
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"mjpeg-server-{self.port}",
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        server.server_close()  # closes the listening socket
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:  # and every live connection
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def pause(self) -> None:
        """Keep connections open but stop sending frames (a stalled camera)."""
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
