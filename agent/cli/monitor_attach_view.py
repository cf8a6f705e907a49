"""What ``edge-agent monitor --attach`` shows: a compact table redrawn in place on a terminal,
one line per scrape off it, one JSON document per scrape with ``--json``.

:class:`InPlace` redraws without clearing the screen: the cursor moves up over the previous
frame (``ESC [ N A``), each row is rewritten and its tail erased (``ESC [ K``), and rows the new
frame no longer has are erased below it (``ESC [ J``). Rows are clipped to the terminal's width
(a wrapped row would throw the count off) and frames to its height.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from typing import IO, Any

from agent.cli.common import format_table
from agent.comms.prometheus.scrape import DaemonFigures

__all__ = ["InPlace", "Scrape", "clip", "scrape_json", "scrape_line", "scrape_table"]

GIB = 1024.0**3
_SGR = re.compile(r"\x1b\[[0-9;]*m")
#: the governor's states (agent.monitor.governor.states) → SGR colour: green when normal,
#: yellow while it throttles for heat or power, magenta / bold red for memory pressure
STATE_COLOURS = {
    "normal": "32",
    "thermal_fps": "33",
    "thermal_pool": "33;1",
    "memory_high": "35",
    "memory_critical": "31;1",
}


@dataclass(frozen=True)
class Scrape:
    """One attempt at the endpoint: the figures, or why there are none this time (then
    ``figures`` are the last good ones, if any)."""

    url: str
    at: float
    figures: DaemonFigures | None
    error: str | None = None


def _paint(text: str, sgr: str | None, color: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if color and sgr else text


def _num(value: float | None, spec: str, unit: str = "") -> str:
    return "?" if value is None else f"{value:{spec}}{unit}"


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.1f}"


def _pct(ratio: float | None) -> str:
    return "?" if ratio is None else f"{ratio * 100:.0f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _governor(f: DaemonFigures, color: bool) -> str:
    state = f.governor_state or "?"
    cap = f.governor_fps_cap
    builds = {None: "?", True: "allowed", False: "held"}[f.governor_builds_allowed]
    return (
        f"governor  {_paint(state, STATE_COLOURS.get(state), color)}"
        f"  workers {_num(f.governor_workers, '.0f')}"
        f"  fps cap {'none' if cap is None else f'{cap:.1f}'}  builds {builds}"
    )


def _memory(f: DaemonFigures) -> str:
    used, total = f.memory_used_bytes, f.memory_total_bytes
    if used is None or total is None:
        return "?"
    return f"{used / GIB:.2f}/{total / GIB:.2f} GiB ({_pct(f.memory_used_ratio)})"


def _hottest(f: DaemonFigures) -> str:
    hot = f.hottest()
    return "?" if hot is None else f"{hot[1]:.1f} °C ({hot[0]})"


def _board(f: DaemonFigures) -> str:
    text = f"board     power {_num(f.power_w, '.2f', ' W')}  hottest {_hottest(f)}"
    text += f"  memory {_memory(f)}  gpu {_pct(f.gpu_load_ratio)}  cpu {_pct(f.cpu_load_ratio)}"
    active = sorted(k for k, v in f.throttled.items() if v)
    if active:
        text += f"  throttled {', '.join(active)}"
    return text


def _pipeline(f: DaemonFigures) -> str:
    rows = [
        [f"source {s.name}", s.state or "?", _num(s.fps, ".1f"), _num(s.drops, ".0f"),
         _num(s.frames, ".0f"), _ms(s.latency_p50_s), _ms(s.latency_p99_s)]
        for s in f.sources
    ]  # fmt: skip
    rows += [[f"stage {s.name}", "", "", "", "", _ms(s.p50_s), _ms(s.p99_s)] for s in f.stages]
    heads = ["PIPELINE", "STATE", "FPS", "DROPS", "FRAMES", "P50 ms", "P99 ms"]
    return format_table(heads, rows)


def _head(s: Scrape, prefix: str) -> str:
    f = s.figures
    text = f"{prefix}{s.url}  {_clock(s.at)}"
    if f is not None and f.reported:
        age = None if f.taken_at is None else max(0.0, s.at - f.taken_at)
        text += f"  up {_duration(f.uptime_s)}  reported {_num(age, '.1f', ' s')} ago"
    return text


def scrape_table(s: Scrape, *, color: bool) -> list[str]:
    """The terminal view of one scrape ("?" marks a figure the daemon does not export)."""
    lines = [_head(s, "edge-agent monitor  ")]
    if s.error is not None:
        lines.append(_paint(f"unreachable: {s.error}", "31;1", color))
    f = s.figures
    if f is None or not f.reported:
        lines.append("waiting for the daemon's first metrics report (every telemetry.interval_s)")
        return lines
    lines.append(_governor(f, color))
    lines.extend(
        f"model     {m.name} v{m.version or '?'} {m.precision or '?'}"
        f"  engine {m.engine_hash[:12] or '?'}"
        for m in f.models
    )
    lines.append(_board(f))
    lines.append(f"ota       {f.ota_state or 'none'}")
    if f.sources or f.stages:
        lines.extend(_pipeline(f).splitlines())
    return lines


def scrape_line(s: Scrape) -> str:
    """One plain line per scrape (no escape codes) for pipes and logs."""
    head = _clock(s.at)
    if s.error is not None:
        return f"{head} unreachable: {s.error}"
    f = s.figures
    if f is None or not f.reported:
        return f"{head} waiting for the daemon's first metrics report"
    parts = [f"governor {f.governor_state or '?'}"]
    parts += [
        f"{src.name} {src.state or '?'} {_num(src.fps, '.1f')} fps {_num(src.drops, '.0f')} drops"
        f" p50/p99 {_ms(src.latency_p50_s)}/{_ms(src.latency_p99_s)} ms"
        for src in f.sources
    ]
    parts += [f"power {_num(f.power_w, '.2f', ' W')}", f"hottest {_hottest(f)}"]
    parts += [f"memory {_pct(f.memory_used_ratio)}", f"ota {f.ota_state or 'none'}"]
    return f"{head} " + "; ".join(parts)


def scrape_json(s: Scrape) -> dict[str, Any]:
    """One scrape as a JSON document: the figures in base units (as exported), or the error."""
    return {
        "url": s.url,
        "scraped_at": s.at,
        "reachable": s.error is None,
        "error": s.error,
        "reported": s.figures is not None and s.figures.reported,
        "figures": None if s.figures is None else s.figures.to_json(),
    }


def clip(line: str, width: int) -> str:
    """``line`` cut to ``width`` visible characters; SGR sequences kept whole (and closed)."""
    out: list[str] = []
    shown, pos, coloured = 0, 0, False
    while pos < len(line) and shown < width:
        match = _SGR.match(line, pos)
        if match is not None:
            out.append(match.group())
            coloured = match.group() != "\x1b[0m"
            pos = match.end()
            continue
        out.append(line[pos])
        shown, pos = shown + 1, pos + 1
    if pos < len(line) and coloured:
        out.append("\x1b[0m")
    return "".join(out)


class InPlace:
    """Redraws a block of rows at the same place on a terminal, frame after frame."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.height = 0

    def draw(self, lines: list[str]) -> None:
        cols, rows = shutil.get_terminal_size((120, 40))
        frame = [clip(line, max(1, cols - 1)) for line in lines[: max(1, rows - 1)]]
        parts: list[str] = []
        if self.height:
            parts.append(f"\x1b[{self.height}A\r")
        parts.extend(f"{row}\x1b[K\n" for row in frame)
        if len(frame) < self.height:
            parts.append("\x1b[J")
        self.out.write("".join(parts))
        self.out.flush()
        self.height = len(frame)
