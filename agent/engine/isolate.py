"""Run an engine build in a child process with a memory cap and a timeout.

Builds (TensorRT tactic search, ONNX Runtime graph optimisation, quantisation) can use a lot of
memory, and on a Jetson the CPU and GPU share it: a build that runs away must not take the
serving process with it. So the build runs in a child started with the ``spawn`` method, in its
own process group (``setsid``) with ``oom_score_adj`` raised to :data:`BUILD_OOM_SCORE_ADJ`
(so that the kernel's OOM killer, if it must act, kills the build and not the agent), under a
memory cap enforced two ways: ``RLIMIT_AS`` set *before* the backend
is imported (CPU backends only: CUDA reserves far more virtual address space than it uses, so
an address-space limit would break TensorRT's CUDA initialisation; the limit is the cap plus
:func:`address_space_headroom_mib` for arenas and thread stacks), and the parent watching the
child's resident memory (``/proc/<pid>/status`` ``VmRSS``) and killing it past the cap. The
parent relays the child's progress messages to its :data:`ProgressFn`, kills the whole
process group when the timeout expires, and turns every way the child can fail into
:class:`BuildFailed`:

* ``MemoryError``, ``std::bad_alloc``, "Failed to allocate", or death by SIGKILL (the kernel's
  OOM killer) → ``BuildFailed(out_of_memory=True, workspace_mib=..., memory_cap_mib=...)``; the
  orchestrator retries once with half the workspace;
* a timeout → ``BuildFailed`` naming the timeout;
* a crash (segfault, ``os._exit``) → ``BuildFailed`` with the exit code or signal.

An :class:`EdgeAgentError` raised in the child (a bad model, say) is re-raised as it is.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from agent.backends.base import BuildRequest, BuildResult, ProgressFn, no_progress
from agent.core.errors import BuildFailed, EdgeAgentError

__all__ = [
    "IsolatedOutcome",
    "backend_build_target",
    "build_isolated",
    "child_main",
    "is_out_of_memory_text",
    "run_isolated",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_OOM_MARKERS = (
    "bad_alloc",
    "failed to allocate",
    "out of memory",
    "cannot allocate memory",
    "unable to allocate",
    "memoryerror",
    "std::length_error",
    "outofmemory",
)
_POLL_S = 0.05
_CUDA_BACKENDS = frozenset({"tensorrt"})
_MIB = 1 << 20


def is_out_of_memory_text(text: str) -> bool:
    """True when an error message looks like an allocation failure."""
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


@dataclass(frozen=True)
class IsolatedOutcome(Generic[T]):
    """What a successful child returned, with its peak resident memory and wall time."""

    value: T
    peak_rss_mib: float | None
    wall_s: float


# ---------------------------------------------------------------------------- child side


def address_space_headroom_mib(cpus: int | None = None) -> int:
    """Virtual memory a CPU build reserves beyond what it touches: each thread that allocates
    gets a glibc malloc arena (64 MiB reserved) and a stack (8 MiB), and ONNX Runtime and
    OpenMP start about two threads per core. Without this headroom ``RLIMIT_AS`` refuses
    thread creation on many-core hosts ("can't start new thread") long before resident memory
    nears the cap; the cap itself is enforced on resident memory by the parent."""
    n = max(1, cpus if cpus is not None else (os.cpu_count() or 1))
    return 512 + 2 * n * (64 + 8)


def _limit_memory(cap_mib: int | None) -> None:
    if cap_mib is None:
        return
    cap = (int(cap_mib) + address_space_headroom_mib()) * _MIB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL us if the parent dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


#: The build child's ``oom_score_adj``: if memory runs out, the kernel's OOM killer picks the
#: build (and the unit's OOMPolicy=continue keeps the service up), not the serving agent.
BUILD_OOM_SCORE_ADJ = 500


def _raise_oom_score(value: int | None) -> None:
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


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform.startswith("linux") else rss / _MIB


def child_main(
    channel: Any,
    job_path: str,
    address_space_cap_mib: int | None,
    oom_score_adj: int | None = BUILD_OOM_SCORE_ADJ,
) -> None:
    """Entry point of the child process (top level so ``spawn`` can pickle it).

    Sets the memory cap, then loads ``(target, args)`` from the pickle at ``job_path`` (so the
    target's module, and the backend it imports, load under the cap), runs
    ``target(progress, *args)`` and puts exactly one final message on ``channel``:
    ``("ok", value, peak_rss_mib)`` or ``("error", payload, peak_rss_mib)``.

    The job travels through a file, not through the ``Process`` arguments: CPython's spawn
    writes those into a pipe whose read end the parent keeps open until the write completes,
    so a child that dies while starting would block the parent forever on a large payload.
    """
    with contextlib.suppress(OSError):
        os.setsid()  # own session and process group: the parent kills the group on timeout
    _raise_oom_score(oom_score_adj)  # the kernel's OOM killer takes the build, not the agent
    _die_with_parent()

    def progress(stage: str, fraction: float, message: str) -> None:
        with contextlib.suppress(Exception):
            channel.put(("progress", str(stage), float(fraction), str(message)))

    try:
        _limit_memory(address_space_cap_mib)
        with open(job_path, "rb") as handle:
            target, args = pickle.load(handle)
        value = target(progress, *args)
        message: tuple[Any, ...] = ("ok", value, _peak_rss_mib())
    except BaseException as exc:
        # Free what we can first: building the report must not itself run out of memory.
        text = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=20)
        try:
            blob: bytes | None = pickle.dumps(exc)
        except Exception:
            blob = None
        payload = {
            "type": type(exc).__name__,
            "text": text,
            "traceback": tb,
            "memory_error": isinstance(exc, MemoryError),
            "pickled": blob,
        }
        message = ("error", payload, _peak_rss_mib())
    try:
        channel.put(message)
    except Exception as exc:  # unpicklable value
        channel.put(
            (
                "error",
                {
                    "type": type(exc).__name__,
                    "text": f"could not send the result back: {exc}",
                    "traceback": "",
                    "memory_error": False,
                    "pickled": None,
                },
                _peak_rss_mib(),
            )
        )
    channel.close()
    channel.join_thread()


def backend_build_target(
    progress: ProgressFn, backend_name: str, request: BuildRequest
) -> BuildResult:
    """Child-side build: import the backend (after the memory cap is in place) and build."""
    from agent.backends.base import get_backend

    backend = get_backend(backend_name)
    return backend.build(request, progress)


# ---------------------------------------------------------------------------- parent side


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


def _kill_group(process: Any) -> None:
    pid = process.pid
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()


def _oom_error(
    what: str, detail: str, workspace_mib: int | None, memory_cap_mib: int | None
) -> BuildFailed:
    had = []
    if workspace_mib is not None:
        had.append(f"workspace {workspace_mib} MiB")
    if memory_cap_mib is not None:
        had.append(f"memory cap {memory_cap_mib} MiB")
    limits = " and ".join(had) if had else "no explicit limits"
    return BuildFailed(
        f"{what} ran out of memory with {limits}: {detail}",
        fix="retry with a smaller build.workspace_mib, or raise build.build_memory_cap_mib in "
        "the device profile (and stop other memory-hungry processes)",
        out_of_memory=True,
        workspace_mib=workspace_mib,
        memory_cap_mib=memory_cap_mib,
    )


def run_isolated(
    target: Callable[..., T],
    args: tuple[Any, ...] = (),
    *,
    memory_cap_mib: int | None,
    timeout_s: float,
    progress: ProgressFn = no_progress,
    workspace_mib: int | None = None,
    what: str = "build",
    scratch_dir: str | os.PathLike[str] | None = None,
    limit_address_space: bool = True,
) -> IsolatedOutcome[T]:
    """Run ``target(progress, *args)`` in a spawned child and return its value.

    The child is killed when its resident memory passes ``memory_cap_mib``; with
    ``limit_address_space`` (CPU-only work) ``RLIMIT_AS`` is set to the cap as well, so an
    allocation past it fails inside the child with a clear MemoryError.

    ``target`` must be a module-level function (it is pickled by reference); ``target`` and
    ``args`` are pickled into a file under ``scratch_dir`` (default: the system temp dir).
    Progress messages from the child are passed to ``progress`` in this process.
    """
    with tempfile.TemporaryDirectory(prefix="edge-agent-job.", dir=scratch_dir) as tmp:
        job_path = os.path.join(tmp, "job.pickle")
        with open(job_path, "wb") as handle:
            pickle.dump((target, args), handle, protocol=pickle.HIGHEST_PROTOCOL)
        return _run_job(
            job_path,
            memory_cap_mib=memory_cap_mib,
            limit_address_space=limit_address_space,
            timeout_s=timeout_s,
            progress=progress,
            workspace_mib=workspace_mib,
            what=what,
        )


def _run_job(
    job_path: str,
    *,
    memory_cap_mib: int | None,
    limit_address_space: bool,
    timeout_s: float,
    progress: ProgressFn,
    workspace_mib: int | None,
    what: str,
) -> IsolatedOutcome[Any]:
    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()
    process = ctx.Process(
        target=child_main,
        args=(channel, job_path, memory_cap_mib if limit_address_space else None),
        name=f"edge-agent-{what}",
        daemon=True,
    )
    started = time.monotonic()
    deadline = started + float(timeout_s)
    final: tuple[Any, ...] | None = None
    timed_out = False
    over_cap: float | None = None
    process.start()
    log.info(
        "started isolated process",
        extra={
            "what": what,
            "pid": process.pid,
            "memory_cap_mib": memory_cap_mib,
            "timeout_s": timeout_s,
        },
    )
    try:
        while final is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if memory_cap_mib is not None and process.pid is not None:
                rss = rss_mib(process.pid)
                if rss is not None and rss > memory_cap_mib:
                    over_cap = rss
                    _kill_group(process)
                    break
            try:
                message = channel.get(timeout=min(_POLL_S * 4, remaining))
            except queue.Empty:
                if not process.is_alive():
                    # The child died; drain anything it managed to send, then stop.
                    with contextlib.suppress(queue.Empty):
                        while final is None:
                            message = channel.get(timeout=_POLL_S)
                            final = _handle(message, progress)
                    break
                continue
            except (EOFError, OSError):
                break
            final = _handle(message, progress)
        if timed_out:
            _kill_group(process)
        process.join(timeout=10)
        if process.is_alive():
            _kill_group(process)
            process.join(timeout=5)
    except BaseException:
        _kill_group(process)
        process.join(timeout=5)
        raise
    finally:
        with contextlib.suppress(Exception):
            channel.close()
            channel.cancel_join_thread()
    wall = time.monotonic() - started

    if timed_out:
        raise BuildFailed(
            f"{what} did not finish within the {timeout_s:g} s timeout and was killed",
            fix="raise build.build_timeout_s in the device profile, or lower "
            "build.optimization_level so the builder searches fewer tactics",
            workspace_mib=workspace_mib,
            memory_cap_mib=memory_cap_mib,
        )
    if over_cap is not None:
        raise _oom_error(
            what,
            f"its resident memory reached {over_cap:.0f} MiB and it was killed",
            workspace_mib,
            memory_cap_mib,
        )
    if final is not None and final[0] == "ok":
        return IsolatedOutcome(final[1], final[2], wall)
    if final is not None and final[0] == "error":
        raise _error_from_payload(final[1], what, workspace_mib, memory_cap_mib)
    code = process.exitcode
    if code is not None and code < 0:
        signum = -code
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if signum == signal.SIGKILL:
            raise _oom_error(
                what,
                "the process was killed by SIGKILL (most likely the kernel's OOM killer)",
                workspace_mib,
                memory_cap_mib,
            )
        raise BuildFailed(
            f"{what} process crashed with {name}",
            fix="check the build log; a backend crash often means an unsupported layer or a "
            "broken install of the inference library",
            workspace_mib=workspace_mib,
            memory_cap_mib=memory_cap_mib,
        )
    raise BuildFailed(
        f"{what} process exited with code {code} without reporting a result",
        fix="check the build log; the backend called exit() or crashed",
        workspace_mib=workspace_mib,
        memory_cap_mib=memory_cap_mib,
    )


def _handle(message: Any, progress: ProgressFn) -> tuple[Any, ...] | None:
    if not isinstance(message, tuple) or not message:
        return None
    if message[0] == "progress":
        try:
            progress(message[1], message[2], message[3])
        except Exception:
            log.exception("progress callback failed")
        return None
    return message


def _error_from_payload(
    payload: dict[str, Any], what: str, workspace_mib: int | None, memory_cap_mib: int | None
) -> BaseException:
    text = str(payload.get("text", "unknown error"))
    tb = str(payload.get("traceback", ""))
    exc: BaseException | None = None
    blob = payload.get("pickled")
    if blob is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(blob)
    if isinstance(exc, BuildFailed) and exc.out_of_memory:
        return exc
    if payload.get("memory_error") or is_out_of_memory_text(text):
        return _oom_error(what, text, workspace_mib, memory_cap_mib)
    if isinstance(exc, EdgeAgentError):
        return exc
    log.error("isolated %s failed", what, extra={"error": text, "traceback": tb})
    last = tb.strip().splitlines()[-3:] if tb else []
    return BuildFailed(
        f"{what} failed: {text}" + (f" [{' | '.join(s.strip() for s in last)}]" if last else ""),
        fix="check that the model is supported by the backend; the traceback is in the log",
        workspace_mib=workspace_mib,
        memory_cap_mib=memory_cap_mib,
    )


def build_isolated(
    backend_name: str,
    request: BuildRequest,
    *,
    memory_cap_mib: int | None,
    timeout_s: float,
    progress: ProgressFn = no_progress,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> IsolatedOutcome[BuildResult]:
    """Run ``get_backend(backend_name).build(request)`` in an isolated child."""
    return run_isolated(
        backend_build_target,
        (backend_name, request),
        memory_cap_mib=memory_cap_mib,
        timeout_s=timeout_s,
        progress=progress,
        workspace_mib=request.workspace_mib,
        what=f"{backend_name} {request.precision} build",
        scratch_dir=scratch_dir,
        # CUDA maps large virtual ranges at init; only the RSS watch caps GPU backends.
        limit_address_space=backend_name not in _CUDA_BACKENDS,
    )
