"""The daemon's signal handlers: SIGTERM and SIGINT stop it (drain, summary, exit 0), SIGHUP
reloads its config. A second SIGINT while it stops (Ctrl-C pressed again on a terminal) stops
waiting for the drain: it raises :class:`KeyboardInterrupt` in the main thread, the daemon shuts
its components down (bounded) and the CLI exits 130."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Protocol

__all__ = ["Stoppable", "install_signals", "restore_signals"]


class Stoppable(Protocol):
    """What the handlers ask of the daemon (both safe from a signal handler)."""

    @property
    def stop_requested(self) -> bool: ...

    def request_stop(self, reason: str) -> None: ...

    def request_reload(self) -> None: ...


def install_signals(daemon: Stoppable) -> dict[int, Any]:
    """Install the handlers (main thread only; elsewhere none); returns the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and daemon.stop_requested:
            raise KeyboardInterrupt  # Ctrl-C again: stop waiting for the drain
        daemon.request_stop(signal.Signals(signum).name)

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        daemon.request_reload()

    handlers: dict[int, Any] = {
        signal.SIGINT: on_stop,
        signal.SIGTERM: on_stop,
        signal.SIGHUP: on_hup,
    }
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_signals` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)
