"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING over
``$NOTIFY_SOCKET``.

systemd passes the socket path in ``NOTIFY_SOCKET`` (a file-system path, or an abstract socket
written with a leading ``@``) and, when ``WatchdogSec=`` is set, the watchdog timeout in
``WATCHDOG_USEC`` (for the process ``WATCHDOG_PID``, when given). A :class:`Notifier` built
from an environment without ``NOTIFY_SOCKET`` is disabled: every call is a cheap no-op, so the
daemon runs the same way in a terminal. Sending never raises: a notification that cannot be
delivered is logged once and dropped (systemd's watchdog then does its job).

The environment is read by :meth:`Notifier.from_environ` (called by the daemon at start-up),
never at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

from agent.core.logs import log_fields

log = logging.getLogger(__name__)

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(path: str) -> str | bytes:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value: ``@name`` is the abstract socket
    ``\\0name``; anything else is a path."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd enforces on ``pid``, from ``WATCHDOG_USEC`` (and
    ``WATCHDOG_PID`` when set); None when there is none, or it is for another process."""
    raw = environ.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    owner = environ.get("WATCHDOG_PID", "").strip()
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning(
            "WATCHDOG_USEC=%r is not an integer; the systemd watchdog is not served", raw,
            extra=log_fields(event="sd_notify"),
        )  # fmt: skip
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends sd_notify messages to one socket. ``enabled`` is False without a socket."""

    def __init__(
        self,
        socket_path: str | None,
        *,
        watchdog_s: float | None = None,
    ) -> None:
        self.socket_path = socket_path or None
        self.watchdog_s = watchdog_s
        self.sent = 0
        self._sock: socket.socket | None = None
        self._warned = False
        if self.socket_path is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Read ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID``; with ``unset`` remove them
        from ``environ`` so that child processes (engine builds) do not inherit them."""
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        watchdog = watchdog_interval_s(env, os.getpid())
        if unset:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return cls(path, watchdog_s=watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def ping_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the timeout (sd_watchdog_enabled(3))."""
        return None if self.watchdog_s is None or not self.enabled else self.watchdog_s / 2.0

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines; True when the datagram went out (False when disabled)."""
        if self._sock is None or self.socket_path is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")
            lines.append(f"{key}={text}")
        payload = "\n".join(lines).encode("utf-8", errors="replace")
        try:
            self._sock.sendto(payload, socket_address(self.socket_path))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot notify systemd on %s: %s (further failures are not logged)",
                    self.socket_path, exc,
                    extra=log_fields(event="sd_notify", socket=self.socket_path),
                )  # fmt: skip
            return False
        self.sent += 1
        return True

    # The messages the daemon uses, named after sd_notify(3).

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 match the reload to this message.
        fields: dict[str, str | int] = {
            "RELOADING": 1,
            "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
        }
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up/stop time (EXTEND_TIMEOUT_USEC, systemd >= 236)."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))

    def errno(self, code: int) -> bool:
        return self.send(ERRNO=code)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
