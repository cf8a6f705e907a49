"""The human log format for a terminal: one short line per record.

::

    19:26:22.120 INFO  pipeline source sample: connecting → streaming: receiving frames
    19:26:24.138 INFO  app      shapes-det int8 ×2: sample 15.3 fps, 0 dropped; p50/p99 3.5/30.9 ms
    19:26:30.002 WARN  monitor  governor: memory_critical: ... state=memory_critical
    19:26:31.500 ERROR ota      OTA det v3: failed  reason=signature
                                fix: sign the manifest with a key in ota.trust_dir

Time (local), level, component (the package under ``agent``), message, then the record's key
fields (short scalars the message does not already say). A state change (``new``, an OTA
``state``, a governor ``to_state``) is coloured by how healthy the new state is; a ``fix`` (a
field, or the ``fix`` of the logged exception) goes on its own line. Stats and summary records
are their own message only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["TextFormatter", "record_fields", "state_color"]

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

#: events whose message is the whole line (their fields are for the JSON reader)
OUTPUT_EVENTS = frozenset({"stats", "final_stats", "summary", "stop"})
#: fields never shown as key fields (said by the line already, or noise to a person)
_QUIET = frozenset({"event", "event_ts", "kind", "old", "new", "fix", "ts", "attempt"})
_MAX_FIELDS = 6
_MAX_VALUE = 60

_RESET = "\x1b[0m"
_LEVEL_STYLE = {
    "DEBUG": ("DEBUG", "2"),
    "INFO": ("INFO", "36"),
    "WARNING": ("WARN", "33;1"),
    "ERROR": ("ERROR", "31;1"),
    "CRITICAL": ("CRIT", "31;1;7"),
}
_BAD = frozenset({"failed", "rejected", "rolled_back", "memory_critical", "stalled", "error"})
_WARN = frozenset(
    {
        "connecting", "reconnecting", "reloading", "stopping", "starting", "memory_high",
        "thermal_fps", "thermal_pool", "received", "verified", "downloaded", "building",
        "validating", "activating", "probation",
    }
)  # fmt: skip
_GOOD = frozenset({"ready", "streaming", "normal", "active", "committed"})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's structured fields: ``extra=log_fields(...)`` and any other ``extra`` keys."""
    out: dict[str, Any] = {}
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        out.update(fields)
    for key, value in record.__dict__.items():
        if key not in _RESERVED and key != "fields" and not key.startswith("_"):
            out[key] = value
    return out


def state_color(state: str) -> str:
    """The SGR colour of a state: red when failed, yellow in transit or degraded, green when
    healthy, bold otherwise (stopped, ended, unknown)."""
    if state in _BAD:
        return "31;1"
    if state in _WARN:
        return "33"
    return "32" if state in _GOOD else "1"


def _new_state(fields: Mapping[str, Any]) -> str | None:
    """The state a record says something moved to, if any."""
    for value in (fields.get("new"), fields.get("state") if "update" in fields else None):
        if isinstance(value, str) and value:
            return value
    governor = fields.get("governor")
    if isinstance(governor, Mapping):
        to_state = governor.get("to_state")  # pyright: ignore[reportUnknownMemberType]
        if isinstance(to_state, str) and to_state:
            return to_state
    return None


def _component(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "agent" and len(parts) > 1:
        return parts[1]
    return name


def _short(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, tuple, set)):
        return None
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if not text:
        return None
    if len(text) > _MAX_VALUE:
        text = text[: _MAX_VALUE - 1] + "…"
    quote = isinstance(value, str) and (" " in text or not text.isprintable())
    return repr(text) if quote else text


class TextFormatter(logging.Formatter):
    """See the module docstring. ``color``: ANSI colours (level, state changes, fix)."""

    def __init__(self, *, color: bool) -> None:
        super().__init__()
        self.color = color

    def paint(self, text: str, sgr: str) -> str:
        return f"\x1b[{sgr}m{text}{_RESET}" if self.color else text

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        label, style = _LEVEL_STYLE.get(record.levelname, (record.levelname[:5], "1"))
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        head = (
            f"{clock}.{int(record.msecs):03d} {self.paint(f'{label:<5}', style)} "
            f"{_component(record.name):<8} "
        )
        message = record.getMessage()
        fix = self._fix(record, fields)
        if fix and message.endswith(f" (fix: {fix})"):
            message = message[: -len(f" (fix: {fix})")]
        lines = [head + self._with_state(message, fields) + self._tail(message, fields)]
        if fix:
            lines.append(" " * 28 + self.paint("fix:", "32;1") + " " + fix)
        exc = record.exc_info
        if exc and exc[0] is not None and getattr(exc[1], "fix", None) is None:
            lines.append(self.formatException(exc))
        return "\n".join(lines)

    @staticmethod
    def _fix(record: logging.LogRecord, fields: Mapping[str, Any]) -> str | None:
        fix = fields.get("fix")
        if fix is None and record.exc_info and record.exc_info[1] is not None:
            fix = getattr(record.exc_info[1], "fix", None)
        return str(fix) if fix else None

    def _with_state(self, message: str, fields: Mapping[str, Any]) -> str:
        state = _new_state(fields)
        if state is None:
            return message
        painted = self.paint(state, state_color(state))
        arrow = message.find(f"→ {state}")
        if arrow >= 0:
            at = arrow + 2
        else:
            at = message.rfind(state)
            if at < 0:
                return f"{message} [{painted}]"
        return message[:at] + painted + message[at + len(state) :]

    def _tail(self, message: str, fields: Mapping[str, Any]) -> str:
        if fields.get("event") in OUTPUT_EVENTS:
            return ""
        shown: list[str] = []
        for key, value in fields.items():
            text = _short(value)
            if key in _QUIET or text is None or str(value) in message:
                continue
            shown.append(f"{self.paint(key, '2')}={text}")
            if len(shown) == _MAX_FIELDS:
                break
        return ("  " + " ".join(shown)) if shown else ""
