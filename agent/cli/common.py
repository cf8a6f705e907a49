"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from agent.core.errors import EdgeAgentError
from agent.core.logs import console_format, wants_color

__all__ = ["format_table", "positive_float", "print_error", "print_json"]


def print_json(data: Any, stream: IO[str] | None = None, *, indent: int | None = 2) -> None:
    """``data`` as JSON (one line with ``indent=None``) on ``stream`` (default stdout), flushed."""
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(data, indent=indent, default=str) + "\n")
    out.flush()


def print_error(exc: EdgeAgentError, stream: IO[str] | None = None) -> None:
    """A user error as ``edge-agent: error: ...``: one line (its ``fix`` in brackets) for logs
    and pipes; on a terminal in the text log format, the fix on a line of its own, in colour
    unless ``NO_COLOR``."""
    out = stream if stream is not None else sys.stderr
    if console_format() != "text" or exc.fix is None:
        out.write(f"edge-agent: error: {exc}\n")
        out.flush()
        return
    color = wants_color(out)
    what = f"{exc.path}: {exc.message}" if exc.path else exc.message
    label = "\x1b[31;1merror:\x1b[0m" if color else "error:"
    fix = "\x1b[32;1mfix:\x1b[0m" if color else "fix:"
    out.write(f"edge-agent: {label} {what}\n  {fix} {exc.fix}\n")
    out.flush()


def positive_float(text: str) -> float:
    """An argparse type: a float > 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)
