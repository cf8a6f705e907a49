"""The job protocol between the parent and the build child.

The child puts ``("progress", stage, fraction, message)`` messages on the channel while it
works and exactly one final message: ``("ok", value, peak_rss_mib)`` or ``("error", payload,
peak_rss_mib)``, where the payload describes the exception (and carries it pickled when it can
be). The parent relays progress and turns an error payload into the exception to raise.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import traceback
from typing import Any

from agent.core.errors import BuildFailed, EdgeAgentError
from agent.core.progress import ProgressFn

__all__ = [
    "error_from_payload",
    "error_message",
    "handle_message",
    "is_out_of_memory_text",
    "oom_error",
    "unsendable_message",
]

log = logging.getLogger(__name__)

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


def is_out_of_memory_text(text: str) -> bool:
    """True when an error message looks like an allocation failure."""
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


# ---------------------------------------------------------------------------- child side


def error_message(exc: BaseException, peak_rss_mib: float) -> tuple[Any, ...]:
    """The final ``("error", payload, peak)`` message for an exception raised in the child."""
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
    return ("error", payload, peak_rss_mib)


def unsendable_message(exc: Exception, peak_rss_mib: float) -> tuple[Any, ...]:
    """The final message when the child's result could not be pickled onto the channel."""
    payload = {
        "type": type(exc).__name__,
        "text": f"could not send the result back: {exc}",
        "traceback": "",
        "memory_error": False,
        "pickled": None,
    }
    return ("error", payload, peak_rss_mib)


# ---------------------------------------------------------------------------- parent side


def handle_message(message: Any, progress: ProgressFn) -> tuple[Any, ...] | None:
    """Relay a progress message (returns None) or return the final message."""
    if not isinstance(message, tuple) or not message:
        return None
    if message[0] == "progress":
        try:
            progress(message[1], message[2], message[3])
        except Exception:
            log.exception("progress callback failed")
        return None
    return message


def oom_error(
    what: str, detail: str, workspace_mib: int | None, memory_cap_mib: int | None
) -> BuildFailed:
    """The out-of-memory :class:`BuildFailed` (the orchestrator retries on it)."""
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


def error_from_payload(
    payload: dict[str, Any], what: str, workspace_mib: int | None, memory_cap_mib: int | None
) -> BaseException:
    """The exception to raise in the parent for the child's error payload."""
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
        return oom_error(what, text, workspace_mib, memory_cap_mib)
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
