"""Structured logging, no log files: JSON lines for journald and pipes, a concise human format
on a terminal.

``configure_logging`` is called by the CLI (and again by ``edge-agent run`` once its config is
read); library code only uses ``logging.getLogger(__name__)`` and passes structured fields
through ``extra={"fields": {...}}`` (:func:`log_fields`).

The format is chosen once per process (``--log-format``, default ``auto``): ``json`` when the
stream is the journal (``JOURNAL_STREAM`` names its device and inode, systemd.exec(5)) or is not
a terminal, ``text`` on a terminal (see :mod:`agent.core.logtext`; colours unless ``NO_COLOR``
is set, https://no-color.org, or ``TERM=dumb``).

Records on :data:`STATS_LOGGER` (the periodic stats line, the summary on stop) are a command's
output: in the text format they show at every ``--log-level`` (a terminal never goes silent);
in JSON they obey the level like any record.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from agent.core.logtext import TextFormatter, record_fields

__all__ = [
    "FORMATS",
    "STATS_LOGGER",
    "JsonFormatter",
    "choose_format",
    "configure_logging",
    "console_format",
    "log_fields",
    "wants_color",
]

#: the values of ``--log-format``
FORMATS = ("auto", "json", "text")
#: the logger of the stats lines and the summary on stop (shown at any level on a terminal)
STATS_LOGGER = "agent.stats"


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line with ISO time, level, logger and message."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(record_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _Console:
    """The process's logging choice: what ``--log-format`` asked, what the handler uses now."""

    def __init__(self) -> None:
        self.requested = "auto"
        self.active = "json"


_console = _Console()


def _is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """``stream`` is connected to the journal: ``JOURNAL_STREAM`` is ``<dev>:<inode>`` of the
    journal's socket (systemd.exec(5)); a stream whose descriptor cannot be read counts as the
    journal when the variable is set."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return True
    return expected == f"{st.st_dev}:{st.st_ino}"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def choose_format(requested: str, stream: IO[str], environ: Mapping[str, str] | None = None) -> str:
    """``json`` or ``text`` for ``--log-format requested`` on ``stream``: an explicit choice
    wins; ``auto`` is JSON on the journal and off a terminal, text on a terminal."""
    if requested in ("json", "text"):
        return requested
    env = os.environ if environ is None else environ
    if _is_journal(stream, env):
        return "json"
    return "text" if _isatty(stream) else "json"


def wants_color(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Colours on ``stream``: a terminal, ``NO_COLOR`` unset or empty, ``TERM`` not ``dumb``."""
    env = os.environ if environ is None else environ
    return _isatty(stream) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def configure_logging(
    level: str = "info", stream: IO[str] | None = None, *, fmt: str | None = None
) -> str:
    """Route the root logger to ``stream`` (default stdout) in the chosen format; returns it.

    ``fmt`` (``auto``, ``json``, ``text``) is remembered: a later call without it (the daemon
    re-configuring once its config is read) keeps the command line's choice."""
    out = stream if stream is not None else sys.stdout
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
        _console.requested = fmt
    active = choose_format(_console.requested, out)
    handler = logging.StreamHandler(out)
    if active == "text":
        handler.setFormatter(TextFormatter(color=wants_color(out)))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    pinned = active == "text" and root.level > logging.INFO
    logging.getLogger(STATS_LOGGER).setLevel(logging.INFO if pinned else logging.NOTSET)
    _console.active = active
    return active


def console_format() -> str:
    """The format the console handler uses now (``json`` before any configuration)."""
    return _console.active


def log_fields(**fields: Any) -> dict[str, Any]:
    """``logger.info("msg", extra=log_fields(a=1))`` attaches structured fields."""
    return {"fields": fields}
