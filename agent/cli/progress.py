"""Progress of long commands (``build``, ``quantize``, and ``run`` while it builds engines).

Never on stdout: stdout is a command's result (``--json`` prints exactly one JSON document).

* On a terminal (stderr): a tqdm bar per stage. While a bar is shown, console log records are
  written through ``tqdm.write`` (:func:`tqdm.contrib.logging.logging_redirect_tqdm`), which
  clears the bar, writes the record on its own row and draws the bar again below it: a bar
  and a log line never share a row.
* Otherwise: one event per 5 % of a stage (plus each stage's end) on stderr, in the log format
  (a JSON line ``{"event": "progress", ...}``, or a text line with ``--log-format text``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import IO, Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from agent.cli.common import print_json
from agent.core.logs import console_format

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """A tqdm bar per stage on a TTY; progress events otherwise, both on ``stream`` (default
    stderr)."""

    def __init__(self, *, tty: bool | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._stage = ""
        self._last = -1.0
        self._lock = threading.Lock()

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        with self._lock:
            fraction = max(0.0, min(1.0, float(fraction)))
            if self.tty:
                self._tqdm(stage, fraction, message)
                return
            if stage == self._stage and fraction < 1.0 and fraction - self._last < 0.05:
                return
            self._stage, self._last = stage, fraction
            self._event(stage, fraction, message)

    def _event(self, stage: str, fraction: float, message: str) -> None:
        if console_format() == "text":
            clock = time.strftime("%H:%M:%S")
            self.stream.write(f"{clock} {stage}: {fraction * 100:3.0f}% {message}\n")
            self.stream.flush()
            return
        event = {
            "event": "progress",
            "stage": stage,
            "fraction": round(fraction, 4),
            "message": message,
        }
        print_json(event, self.stream, indent=None)

    def _tqdm(self, stage: str, fraction: float, message: str) -> None:
        desc = f"{stage}: {message[:70]}"
        if stage != self._stage or self._bar is None:
            self._close_bar()
            self._stage = stage
            if self._redirect is None:
                self._redirect = contextlib.ExitStack()
                self._redirect.enter_context(logging_redirect_tqdm())
            self._bar = tqdm(
                total=100,
                initial=round(fraction * 100),
                desc=desc,
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
                bar_format="{bar:24} {percentage:3.0f}% {desc}",
            )
            return
        self._bar.n = round(fraction * 100)
        self._bar.set_description_str(desc, refresh=False)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Close the bar and give the console log handler back."""
        with self._lock:
            self._close_bar()
            if self._redirect is not None:
                self._redirect.close()
                self._redirect = None
