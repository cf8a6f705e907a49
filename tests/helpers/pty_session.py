"""The real CLI (``python -m agent``) on a real pseudo-terminal (stdlib :mod:`pty`).

The child is a session leader whose controlling terminal is the pty (``setsid`` + ``TIOCSCTTY``),
so writing ``\\x03`` to the master makes the line discipline send SIGINT to its foreground
process group, as Ctrl-C on a terminal does. The window is 120 x 40 (tqdm sizes its bars from
it). stdout can stay on the pty or be a pipe (``build --json | ...`` with bars on stderr).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

from tests.assets import REPO

ROWS, COLS = 40, 120


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI child: the repo importable, caches and state under ``tmp``,
    no journal, no colour preference leaking in from the caller."""
    dropped = ("JOURNAL_STREAM", "NO_COLOR", "XDG_CACHE_HOME", "EDGE_AGENT_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in (*dropped, "CACHE_DIRECTORY")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "xdg"))
    env.update(TERM="xterm-256color", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _controlling_tty() -> None:
    """In the child, after ``setsid``: the pty on fd 0 becomes the controlling terminal, and
    Ctrl-C / Ctrl-\\ act as they do for a shell's foreground job. A suite started as a background
    job of a non-interactive shell (a CI runner, ``scripts/test.sh``'s second interpreter)
    inherits SIGINT and SIGQUIT ignored, and Python installs no KeyboardInterrupt handler for an
    ignored SIGINT: without this the child would never see the Ctrl-C the test types."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    """``python -m agent ARGS`` with stdin and stderr (and stdout unless ``pipe_stdout``) on a
    pty. ``output`` gathers what the terminal shows; ``stdout`` what the pipe got."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str], cwd: Path, pipe_stdout: bool = False
    ) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            stdin=slave,
            stdout=subprocess.PIPE if pipe_stdout else slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_controlling_tty,  # noqa: PLW1509 (runs before exec; tests only)
        )
        os.close(slave)
        self.output = b""
        self.stdout = b""
        self._eof = False

    def _pump(self, timeout: float) -> None:
        fds = [] if self._eof else [self.master]
        pipe = self.proc.stdout
        if pipe is not None and not pipe.closed:
            fds.append(pipe.fileno())
        if not fds:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                data = b""
            if fd == self.master:
                self.output += data
                self._eof = not data
            elif data:
                self.stdout += data
            elif pipe is not None:
                pipe.close()

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """Read until ``pattern`` (a regex) shows on the terminal; False when the child ends
        or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while re.search(pattern, self.text) is None and time.monotonic() < deadline:
            if self._eof and self.proc.poll() is not None:
                break
            self._pump(0.2)
        return re.search(pattern, self.text) is not None

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float) -> int:
        """Read everything until the child exits; its exit code (killed past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pipe = self.proc.stdout
            if self._eof and (pipe is None or pipe.closed) and self.proc.poll() is not None:
                break
            self._pump(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout=10)
        os.close(self.master)
        return code

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def rows(self) -> list[str]:
        """What the terminal showed, split on carriage returns and newlines (a bar redrawn in
        place is one row per redraw), without empty rows."""
        return [row for row in re.split(r"[\r\n]", self.text) if row.strip()]
