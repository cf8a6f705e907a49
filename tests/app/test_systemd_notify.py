"""sd_notify over a real AF_UNIX datagram socket: path and abstract sockets, the watchdog
environment, the no-op without systemd."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from agent.app.systemd import Notifier, socket_address, watchdog_interval_s


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def test_path_socket_gets_every_message(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as rx:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "KEEP": "1"}
        n = Notifier.from_environ(env)
        try:
            assert n.enabled
            assert n.watchdog_s == 2.0
            assert n.ping_interval_s == 1.0
            assert env == {"KEEP": "1"}, "children must not inherit NOTIFY_SOCKET/WATCHDOG_*"
            assert n.ready("serving\nsecond line")
            assert _fields(rx.recv(4096)) == {"READY": "1", "STATUS": "serving second line"}
            assert n.watchdog()
            assert _fields(rx.recv(4096)) == {"WATCHDOG": "1"}
            assert n.status("x")
            assert _fields(rx.recv(4096)) == {"STATUS": "x"}
            assert n.reloading()
            got = _fields(rx.recv(4096))
            assert got["RELOADING"] == "1" and int(got["MONOTONIC_USEC"]) > 0
            assert n.stopping("bye")
            assert _fields(rx.recv(4096)) == {"STOPPING": "1", "STATUS": "bye"}
            assert n.extend_timeout(1.5)
            assert _fields(rx.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "1500000"}
            assert n.sent == 6
        finally:
            n.close()


def test_abstract_socket() -> None:
    name = f"@edge-agent-test-{uuid.uuid4().hex}"
    assert socket_address(name) == b"\0" + name[1:].encode()
    with _receiver(socket_address(name)) as rx:
        n = Notifier(name)
        try:
            assert n.watchdog()
            assert rx.recv(64) == b"WATCHDOG=1"
        finally:
            n.close()


def test_disabled_without_socket_is_a_no_op() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled
    assert n.ping_interval_s is None
    assert not n.ready("x")
    assert not n.watchdog()
    assert n.sent == 0


def test_a_missing_socket_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert not n.watchdog()
    assert not n.watchdog()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per tick


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env, os.getpid()) == expected
