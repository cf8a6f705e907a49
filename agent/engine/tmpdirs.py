"""Scratch directories in the engine cache: claimed by the process that works in them, swept
when their owner is gone.

A build works in ``<cache>/.tmp-build-*`` (the quantizer's export in ``.tmp-quantize-*``, a
commit in ``.tmp-<entry>-*``). A build that is SIGKILLed (the OOM killer, a power cut, the
daemon killed with its build child) cannot remove its directory, so the next start does. To
tell a leftover from a directory a live build is using (another process sharing the cache: the
CLI next to the daemon), the owner holds an exclusive ``flock`` on ``<dir>/.owner`` for as long
as it works there: the kernel drops the lock when the owner dies, however it dies, and pid
reuse cannot fool it. The lock file is created under a private name, locked, then renamed to
``.owner``, so a ``.owner`` that can be locked belongs to nobody. A directory without one (the
instant between its ``mkdir`` and the claim, or written by an older version) is removed only
once it is older than :data:`UNCLAIMED_GRACE_S`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from agent.core.closing import Closeable

__all__ = [
    "OWNER_FILE",
    "SCRATCH_PREFIXES",
    "UNCLAIMED_GRACE_S",
    "DirClaim",
    "claim_dir",
    "sweep_scratch",
]

log = logging.getLogger(__name__)

#: the lock file a live owner holds inside its scratch directory
OWNER_FILE = ".owner"
#: scratch directories the sweep looks at (builds, quantizer exports, commits)
SCRATCH_PREFIXES = (".tmp-",)
#: a scratch directory nobody claimed is left alone this long (seconds) after its last change
UNCLAIMED_GRACE_S = 3600.0


class DirClaim(Closeable):
    """An exclusive claim on a scratch directory, held until :meth:`release` (or the owner's
    death). Use as a context manager."""

    def __init__(self, directory: Path, fd: int | None) -> None:
        self.directory = directory
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, *, remove_file: bool = False) -> None:
        """Drop the lock; ``remove_file`` first unlinks ``.owner`` (before a rename publishes
        the directory)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if remove_file:
            with contextlib.suppress(OSError):
                (self.directory / OWNER_FILE).unlink()
        os.close(fd)

    def close(self) -> None:
        """``with claim:`` releases the lock (keeping the owner file) on exit."""
        self.release()


def claim_dir(directory: Path) -> DirClaim:
    """Claim ``directory`` (which must exist) for this process. A claim that cannot be taken
    (a read-only or lock-less filesystem) is logged and returned unheld: the directory then
    falls under the unclaimed grace period."""
    private = directory / f".owner-{uuid.uuid4().hex[:8]}"
    fd: int | None = None
    try:
        fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.rename(private, directory / OWNER_FILE)
    except OSError as exc:
        log.warning(
            "cannot claim scratch directory", extra={"path": str(directory), "error": str(exc)}
        )
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            private.unlink()
        return DirClaim(directory, None)
    return DirClaim(directory, fd)


def _owner_alive(directory: Path) -> bool | None:
    """True: a live process holds the claim; False: a claim whose owner is gone; None: no
    claim file."""
    try:
        fd = os.open(directory / OWNER_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return True  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _is_leftover(directory: Path, now: float, grace_s: float) -> bool:
    alive = _owner_alive(directory)
    if alive is not None:
        return not alive
    try:
        age = now - directory.stat().st_mtime
    except OSError:
        return False
    return age > grace_s


def sweep_scratch(
    root: Path,
    *,
    prefixes: Iterable[str] = SCRATCH_PREFIXES,
    grace_s: float = UNCLAIMED_GRACE_S,
) -> list[Path]:
    """Remove the scratch directories under ``root`` whose owner is gone (unclaimed ones once
    older than ``grace_s``); never one a live process has claimed. Returns what was removed."""
    removed: list[Path] = []
    wanted = tuple(prefixes)
    try:
        children = list(root.iterdir())
    except OSError:
        return removed
    now = time.time()
    for child in children:
        if not child.name.startswith(wanted) or child.is_symlink() or not child.is_dir():
            continue
        if _is_leftover(child, now, grace_s):
            log.info("removing leftover scratch directory", extra={"path": str(child)})
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
