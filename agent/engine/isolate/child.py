"""The build child's side: set the limits, load the job, run it, report exactly once."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
from typing import Any

from agent.engine.isolate.limits import (
    BUILD_OOM_SCORE_ADJ,
    die_with_parent,
    limit_memory,
    peak_rss_mib,
    raise_oom_score,
)
from agent.engine.isolate.protocol import error_message, unsendable_message

__all__ = ["child_main"]

log = logging.getLogger(__name__)


def _run(channel: Any, job_path: str, address_space_cap_mib: int | None) -> tuple[Any, ...]:
    def progress(stage: str, fraction: float, message: str) -> None:
        with contextlib.suppress(Exception):
            channel.put(("progress", str(stage), float(fraction), str(message)))

    try:
        limit_memory(address_space_cap_mib)
        with open(job_path, "rb") as handle:
            target, args = pickle.load(handle)
        value = target(progress, *args)
        return ("ok", value, peak_rss_mib())
    except BaseException as exc:
        # Free what we can first: building the report must not itself run out of memory.
        return error_message(exc, peak_rss_mib())


def child_main(
    channel: Any,
    job_path: str,
    address_space_cap_mib: int | None,
    oom_score_adj: int | None = BUILD_OOM_SCORE_ADJ,
    allow_children: bool = False,
) -> None:
    """Entry point of the child process (top level so ``spawn`` can pickle it).

    Sets the memory cap, then loads ``(target, args)`` from the pickle at ``job_path`` (so the
    target's module, and the backend it imports, load under the cap), runs
    ``target(progress, *args)`` and puts exactly one final message on ``channel``:
    ``("ok", value, peak_rss_mib)`` or ``("error", payload, peak_rss_mib)``.

    The job travels through a file, not through the ``Process`` arguments: CPython's spawn
    writes those into a pipe whose read end the parent keeps open until the write completes,
    so a child that dies while starting would block the parent forever on a large payload.

    ``allow_children``: the job may start isolated children of its own (the whole build run
    from the daemon starts the quantize and backend-build children). The parent starts us as a
    daemonic process (so that it never waits for us at exit), and multiprocessing refuses
    children to a daemonic process; we drop the flag here instead. Our children die with us
    (``PR_SET_PDEATHSIG``), so nothing outlives the parent either way.
    """
    if allow_children:
        multiprocessing.current_process().daemon = False
    with contextlib.suppress(OSError):
        os.setsid()  # own session and process group: the parent kills the group on timeout
    raise_oom_score(oom_score_adj)  # the kernel's OOM killer takes the build, not the agent
    die_with_parent()
    message = _run(channel, job_path, address_space_cap_mib)
    try:
        channel.put(message)
    except Exception as exc:  # unpicklable value
        channel.put(unsendable_message(exc, peak_rss_mib()))
    channel.close()
    channel.join_thread()
