"""Memory limits and watching for the build child: ``RLIMIT_AS`` headroom, ``oom_score_adj``,
death with the parent, resident-memory readings, and killing the child's process group."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import sys
from typing import Any

__all__ = [
    "BUILD_OOM_SCORE_ADJ",
    "address_space_headroom_mib",
    "die_with_parent",
    "kill_group",
    "limit_memory",
    "peak_rss_mib",
    "raise_oom_score",
    "rss_mib",
]

log = logging.getLogger(__name__)

_MIB = 1 << 20

#: The build child's ``oom_score_adj``: if memory runs out, the kernel's OOM killer picks the
#: build (and the unit's OOMPolicy=continue keeps the service up), not the serving agent.
BUILD_OOM_SCORE_ADJ = 500


def address_space_headroom_mib(cpus: int | None = None) -> int:
    """Virtual memory a CPU build reserves beyond what it touches: each thread that allocates
    gets a glibc malloc arena (64 MiB reserved) and a stack (8 MiB), and ONNX Runtime and
    OpenMP start about two threads per core. Without this headroom ``RLIMIT_AS`` refuses
    thread creation on many-core hosts ("can't start new thread") long before resident memory
    nears the cap; the cap itself is enforced on resident memory by the parent."""
    n = max(1, cpus if cpus is not None else (os.cpu_count() or 1))
    return 512 + 2 * n * (64 + 8)


def limit_memory(cap_mib: int | None) -> None:
    """Set ``RLIMIT_AS`` to the cap plus :func:`address_space_headroom_mib` (never above the
    hard limit); nothing when ``cap_mib`` is None."""
    if cap_mib is None:
        return
    cap = (int(cap_mib) + address_space_headroom_mib()) * _MIB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL us if the parent dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def raise_oom_score(value: int | None) -> None:
    """Make this process the OOM killer's preferred victim (raising needs no privilege; never
    lowers a score that is already higher)."""
    if value is None or not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/oom_score_adj", "r+", encoding="ascii") as handle:
            current = int(handle.read().strip() or 0)
            if current < value:
                handle.seek(0)
                handle.write(str(value))
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the build's oom_score_adj to %s: %s", value, exc)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB."""
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform.startswith("linux") else rss / _MIB


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` from ``/proc/<pid>/status`` (None where unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def kill_group(process: Any) -> None:
    """SIGKILL the child's process group (it runs in its own session), then the child."""
    pid = process.pid
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()
