"""JSON from the network, parsed within bounds: size, nesting depth and element count are checked
on the raw bytes *before* :func:`json.loads` runs, so a deep or huge message costs one linear scan
and never a ``RecursionError`` or a large allocation.

Every parse failure is one exception, :class:`JsonRejected`, with a short reason fit for a
counter label and a log line (``too_large``, ``too_deep``, ``too_many_items``, ``not_utf8``,
``not_json``, ``bad_unicode``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["JsonLimits", "JsonRejected", "loads_bounded", "sanitize_text"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JsonLimits:
    """Bounds for one kind of message."""

    max_bytes: int = 256 * 1024
    max_depth: int = 32
    max_items: int = 10_000  # values in arrays + members in objects, summed over the document


class JsonRejected(ValueError):
    """A network message that is not acceptable JSON; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: a JSON string (escapes included); everything between quotes is skipped by the scan
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: the bytes that open or close a container or separate items, outside strings
_STRUCTURE = re.compile(rb"[\[\]{},]")
_OPENERS = (b"[", b"{")


def _scan(data: bytes, limits: JsonLimits) -> None:
    """Depth and item count of ``data``: strings are cut out by one regex pass (C speed), then
    only the structural bytes are walked."""
    depth = items = 0
    for match in _STRUCTURE.finditer(_STRING.sub(b'""', data)):
        char = match.group()
        if char in _OPENERS:
            depth += 1
            items += 1
            if depth > limits.max_depth:
                raise JsonRejected("too_deep", f"nesting deeper than {limits.max_depth}")
        elif char == b",":
            items += 1
            if items > limits.max_items:
                raise JsonRejected("too_many_items", f"more than {limits.max_items} items")
        else:
            depth -= 1


def _no_lone_surrogates(value: Any) -> None:
    """Reject strings holding lone surrogates (``"\\ud800"``): they cannot be encoded again."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise JsonRejected("bad_unicode", "a string holds a lone surrogate") from exc
    elif isinstance(value, dict):
        for key, item in value.items():  # pyright: ignore[reportUnknownVariableType]
            _no_lone_surrogates(key)
            _no_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:  # pyright: ignore[reportUnknownVariableType]
            _no_lone_surrogates(item)


def loads_bounded(payload: bytes | bytearray | memoryview | str, limits: JsonLimits) -> Any:
    """Parse ``payload`` as JSON within ``limits``; :class:`JsonRejected` otherwise.

    The size is checked first, then depth and item count by a linear scan, then the text is
    decoded as strict UTF-8 and parsed; strings with lone surrogates are refused too, so whatever
    is returned can be logged and published again.
    """
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    if len(raw) > limits.max_bytes:
        raise JsonRejected("too_large", f"{len(raw)} bytes > {limits.max_bytes}")
    _scan(raw, limits)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRejected("not_utf8", str(exc)) from exc
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # the scan makes RecursionError unreachable
        raise JsonRejected("not_json", str(exc).splitlines()[0][:200]) from exc
    _no_lone_surrogates(value)
    return value


def sanitize_text(value: object, *, max_len: int = 128) -> str:
    """``value`` as printable text fit for a log line or a published payload: lone surrogates
    and control characters replaced, cut to ``max_len`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    cleaned = "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
    return cleaned if len(cleaned) <= max_len else cleaned[: max_len - 1] + "…"
