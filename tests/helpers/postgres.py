"""A real PostgreSQL server for tests, on a free loopback port, in its own temporary folder.

The binaries come from the distribution's package (``/usr/lib/postgresql/<major>/bin``:
``initdb``, ``pg_ctl``, ``postgres``). ``initdb`` and the server refuse to run as root, so under
uid 0 every server command runs as the ``postgres`` system user (``runuser -u postgres --``) in a
folder made under the system temporary directory (pytest's own ``tmp_path`` parents are private to
root) and handed to that user. The cluster trusts local connections of its superuser ``edge``
(no password), listens only on 127.0.0.1 and a socket in its folder, and runs without fsync.
:func:`start_postgres` raises :class:`PostgresUnavailable` with the precise reason when any of
this is impossible here, so a fixture can skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.broker import free_port

SUPERUSER = "edge"
START_ATTEMPTS = 3
COMMAND_TIMEOUT_S = 90.0


class PostgresUnavailable(Exception):
    """No PostgreSQL server can run here; the message says why."""


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb, pg_ctl and postgres."""
    found = []
    for folder in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(folder)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            major = path.parent.name
            found.append((int(major) if major.isdigit() else 0, path))
    return max(found)[1] if found else None


@dataclass
class PostgresServer:
    """One running cluster; :meth:`stop` ends it and removes its folder."""

    bin_dir: Path
    root: Path
    port: int
    run_as: list[str]
    host: str = "127.0.0.1"
    _databases: int = field(default=0, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        """A URL for ``dbname`` (a password, when given, is sent and ignored: trust auth)."""
        userinfo = SUPERUSER if password is None else f"{SUPERUSER}:{password}"
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg
        from psycopg import sql

        self._databases += 1
        name = f"fleet_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(
            [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args], self.root
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        done = self._pg_ctl(
            "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start"
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed: {_tail(done)} {self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text(errors="replace")[-600:]
        return ""


def start_postgres() -> PostgresServer:
    """A fresh cluster, started and accepting connections (bounded waits)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql)"
        )
    try:
        import psycopg  # noqa: F401  (the tests talk to the server through it)
    except ImportError as exc:
        raise PostgresUnavailable(
            f"psycopg is not installed ({exc}): pip install -e '.[fleet]'"
        ) from exc
    run_as, owner = _server_user()
    root = Path(tempfile.mkdtemp(prefix="edge-agent-pg-"))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        init = _run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            root,
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {_tail(init)}")
        return _start_on_free_port(bin_dir, root, run_as)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _start_on_free_port(bin_dir: Path, root: Path, run_as: list[str]) -> PostgresServer:
    failure: PostgresUnavailable | None = None
    for _ in range(START_ATTEMPTS):  # another process may take the free port first
        server = PostgresServer(bin_dir, root, free_port(), run_as)
        try:
            server.start()
        except PostgresUnavailable as exc:
            failure = exc
            continue
        _wait_accepting(server)
        return server
    assert failure is not None
    raise failure


def _wait_accepting(server: PostgresServer, timeout_s: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                server.stop()
                raise PostgresUnavailable(f"the server did not accept connections: {exc}") from exc
            time.sleep(0.1)


def _server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs server tools as a non-root user, and that user."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser") or (
        "/usr/sbin/runuser" if os.path.exists("/usr/sbin/runuser") else None
    )
    if runuser is None:
        raise PostgresUnavailable("running as root and runuser is missing (initdb refuses root)")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable(
            "running as root and there is no 'postgres' user to run initdb as (initdb refuses root)"
        ) from exc
    return [runuser, "-u", "postgres", "--"], owner


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresUnavailable(f"{Path(argv[0]).name} could not run: {exc}") from exc


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr or done.stdout or f"exit {done.returncode}").strip()[-600:]
