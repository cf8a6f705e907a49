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
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from agent.backends.base import BuildRequest, BuildResult
from agent.core.errors import BuildFailed
from agent.core.progress import ProgressFn, no_progress
from agent.engine.isolate.child import child_main
from agent.engine.isolate.limits import BUILD_OOM_SCORE_ADJ, kill_group, rss_mib
from agent.engine.isolate.protocol import error_from_payload, handle_message, oom_error
from agent.engine.isolate.targets import backend_build_target

__all__ = ["IsolatedOutcome", "build_isolated", "run_isolated"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_S = 0.05
_CUDA_BACKENDS = frozenset({"tensorrt"})


@dataclass(frozen=True)
class IsolatedOutcome(Generic[T]):
    """What a successful child returned, with its peak resident memory and wall time."""

    value: T
    peak_rss_mib: float | None
    wall_s: float


@dataclass(frozen=True)
class _Job:
    """One run of the child: where its job file is and the limits it runs under."""

    path: str
    memory_cap_mib: int | None
    limit_address_space: bool
    timeout_s: float
    progress: ProgressFn
    workspace_mib: int | None
    what: str
    allow_children: bool = False


@dataclass
class _Ending:
    """How waiting for the child ended: its final message, or why there is none."""

    final: tuple[Any, ...] | None = None
    timed_out: bool = False
    over_cap: float | None = None


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
    allow_children: bool = False,
) -> IsolatedOutcome[T]:
    """Run ``target(progress, *args)`` in a spawned child and return its value.

    The child is killed when its resident memory passes ``memory_cap_mib``; with
    ``limit_address_space`` (CPU-only work) ``RLIMIT_AS`` is set to the cap as well, so an
    allocation past it fails inside the child with a clear MemoryError.

    ``target`` must be a module-level function (it is pickled by reference); ``target`` and
    ``args`` are pickled into a file under ``scratch_dir`` (default: the system temp dir).
    Progress messages from the child are passed to ``progress`` in this process.
    ``allow_children`` lets the target run isolated children of its own (their progress goes
    through the target's ``progress``, so it reaches this process too). Those children inherit
    the ``RLIMIT_AS`` set here: leave ``limit_address_space`` off when any of them builds with
    a CUDA backend.
    """
    with tempfile.TemporaryDirectory(prefix="edge-agent-job.", dir=scratch_dir) as tmp:
        job_path = os.path.join(tmp, "job.pickle")
        with open(job_path, "wb") as handle:
            pickle.dump((target, args), handle, protocol=pickle.HIGHEST_PROTOCOL)
        job = _Job(
            job_path,
            memory_cap_mib,
            limit_address_space,
            timeout_s,
            progress,
            workspace_mib,
            what,
            allow_children,
        )
        return _run_job(job)


def _start(job: _Job) -> tuple[Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()
    process = ctx.Process(
        target=child_main,
        args=(
            channel,
            job.path,
            job.memory_cap_mib if job.limit_address_space else None,
            BUILD_OOM_SCORE_ADJ,
            job.allow_children,
        ),
        name=f"edge-agent-{job.what}",
        daemon=True,
    )
    process.start()
    log.info(
        "started isolated process",
        extra={
            "what": job.what,
            "pid": process.pid,
            "memory_cap_mib": job.memory_cap_mib,
            "timeout_s": job.timeout_s,
        },
    )
    return process, channel


def _drain(channel: Any, progress: ProgressFn) -> tuple[Any, ...] | None:
    """After the child died: whatever final message it managed to send, if any."""
    final = None
    with contextlib.suppress(queue.Empty):
        while final is None:
            final = handle_message(channel.get(timeout=_POLL_S), progress)
    return final


def _wait(job: _Job, process: Any, channel: Any, deadline: float) -> _Ending:
    """Relay progress until the final message, the deadline, the memory cap or the child's
    death, whichever comes first."""
    ending = _Ending()
    while ending.final is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            ending.timed_out = True
            break
        if job.memory_cap_mib is not None and process.pid is not None:
            rss = rss_mib(process.pid)
            if rss is not None and rss > job.memory_cap_mib:
                ending.over_cap = rss
                kill_group(process)
                break
        try:
            message = channel.get(timeout=min(_POLL_S * 4, remaining))
        except queue.Empty:
            if not process.is_alive():
                ending.final = _drain(channel, job.progress)
                break
            continue
        except (EOFError, OSError):
            break
        ending.final = handle_message(message, job.progress)
    return ending


def _supervise(job: _Job, process: Any, channel: Any, deadline: float) -> _Ending:
    """Wait for the child, then make sure it is gone (killed on timeout or on any error)."""
    try:
        ending = _wait(job, process, channel, deadline)
        if ending.timed_out:
            kill_group(process)
        process.join(timeout=10)
        if process.is_alive():
            kill_group(process)
            process.join(timeout=5)
    except BaseException:
        kill_group(process)
        process.join(timeout=5)
        raise
    finally:
        with contextlib.suppress(Exception):
            channel.close()
            channel.cancel_join_thread()
    return ending


def _run_job(job: _Job) -> IsolatedOutcome[Any]:
    started = time.monotonic()
    process, channel = _start(job)
    ending = _supervise(job, process, channel, started + float(job.timeout_s))
    wall = time.monotonic() - started
    final = ending.final
    if ending.timed_out:
        raise BuildFailed(
            f"{job.what} did not finish within the {job.timeout_s:g} s timeout and was killed",
            fix="raise build.build_timeout_s in the device profile, or lower "
            "build.optimization_level so the builder searches fewer tactics",
            workspace_mib=job.workspace_mib,
            memory_cap_mib=job.memory_cap_mib,
        )
    if ending.over_cap is not None:
        raise oom_error(
            job.what,
            f"its resident memory reached {ending.over_cap:.0f} MiB and it was killed",
            job.workspace_mib,
            job.memory_cap_mib,
        )
    if final is not None and final[0] == "ok":
        return IsolatedOutcome(final[1], final[2], wall)
    if final is not None and final[0] == "error":
        raise error_from_payload(final[1], job.what, job.workspace_mib, job.memory_cap_mib)
    raise _exit_error(job, process.exitcode)


def _exit_error(job: _Job, code: int | None) -> BuildFailed:
    """The error for a child that ended without a final message."""
    what, workspace_mib, memory_cap_mib = job.what, job.workspace_mib, job.memory_cap_mib
    if code is not None and code < 0:
        signum = -code
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if signum == signal.SIGKILL:
            return oom_error(
                what,
                "the process was killed by SIGKILL (most likely the kernel's OOM killer)",
                workspace_mib,
                memory_cap_mib,
            )
        return BuildFailed(
            f"{what} process crashed with {name}",
            fix="check the build log; a backend crash often means an unsupported layer or a "
            "broken install of the inference library",
            workspace_mib=workspace_mib,
            memory_cap_mib=memory_cap_mib,
        )
    return BuildFailed(
        f"{what} process exited with code {code} without reporting a result",
        fix="check the build log; the backend called exit() or crashed",
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
