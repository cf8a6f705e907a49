"""Progress of long commands (``build``, and ``run`` while it builds engines).

On a terminal a tqdm bar per stage on stderr; otherwise JSON-lines ``progress`` events on stdout
(at most one per 5 % of a stage, plus each stage's end).
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Any

from tqdm import tqdm

from agent.cli.common import print_json

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """A tqdm bar per stage on a TTY (stderr); JSON-lines events on stdout otherwise."""

    def __init__(self, *, tty: bool | None = None, stream: IO[str] | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.stream = stream
        self._bar: Any = None
        self._stage = ""
        self._last = -1.0
        self._lock = threading.Lock()

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        with self._lock:
            if self.tty:
                self._tqdm(stage, fraction, message)
                return
            fraction = max(0.0, min(1.0, float(fraction)))
            if stage == self._stage and fraction < 1.0 and fraction - self._last < 0.05:
                return
            self._stage, self._last = stage, fraction
            event = {
                "event": "progress",
                "stage": stage,
                "fraction": round(fraction, 4),
                "message": message,
            }
            print_json(event, self.stream, indent=None)

    def _tqdm(self, stage: str, fraction: float, message: str) -> None:
        if stage != self._stage or self._bar is None:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=100,
                file=sys.stderr,
                leave=True,
                bar_format="{bar:24} {percentage:3.0f}% {desc}",
            )
        self._bar.n = round(max(0.0, min(1.0, fraction)) * 100)
        self._bar.set_description_str(f"{stage}: {message[:70]}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
