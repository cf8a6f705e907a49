"""``edge-agent monitor``: live power, temperature and memory readings, and the governor's view.

On a TTY the readings are redrawn in place as a table (cursor up, no screen clear); otherwise (or
with ``--json``) each sample is one JSON line: ``Sample.to_json()`` plus a ``governor`` object
(state, decision, the events this sample caused). ``--once --json`` prints one sample and exits 0.
Nothing is throttled: the command shows what the governor *would* decide for this board's profile
(no pipeline → no fps cap stage).

``--attach [URL]`` shows the running daemon's own governor and pipeline figures instead, from its
Prometheus endpoint (:mod:`agent.cli.monitor_attach`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal, cast

from agent.cli.common import format_table
from agent.cli.monitor_attach import SERVICE_CONFIG, run_attach
from agent.cli.monitor_attach_view import InPlace
from agent.config.device import DeviceProfile
from agent.config.load import resolve_profile
from agent.core.errors import EdgeAgentError
from agent.monitor.governor.actions import GovernorEvent
from agent.monitor.governor.machine import Governor
from agent.monitor.sample import MonitorSource, Sample
from agent.monitor.sampler import Sampler
from agent.monitor.select import open_source

__all__ = ["register", "render_table", "sample_line"]

_SOURCES = ("auto", "jtop", "sysfs", "host")


class MonitorArgumentError(EdgeAgentError):
    exit_code = 2


_ONCE_PRIME_S = 0.25


def _open_source(profile: DeviceProfile, root: Path, prefer: str) -> MonitorSource:
    choice = cast(Literal["auto", "jtop", "sysfs", "host"], prefer)  # argparse choices
    return open_source(profile, root=root, prefer=choice)


# --------------------------------------------------------------------------- rendering


def sample_line(sample: Sample, governor: Governor, events: list[GovernorEvent]) -> dict[str, Any]:
    """One JSON line: the sample plus the governor's state, decision and this sample's events."""
    data = sample.to_json()
    data["governor"] = {
        "profile": governor.profile.name,
        **governor.to_json(),
        "events": [e.to_json() for e in events],
    }
    return data


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "?" if value is None else f"{value:{spec}}{unit}"


def _memory_rows(sample: Sample) -> list[list[str]]:
    mem = sample.memory
    gib = 1024.0
    used = (
        mem.total_mib - mem.available_mib
        if mem.total_mib is not None and mem.available_mib is not None
        else mem.used_mib
    )
    rows = [
        [
            "memory",
            "ram",
            f"{_fmt(None if used is None else used / gib, '.2f')} / "
            f"{_fmt(None if mem.total_mib is None else mem.total_mib / gib, '.2f')} GiB "
            f"({_fmt(mem.used_pct, '.1f', '%')})",
        ]
    ]
    if mem.swap_total_mib:
        rows.append(
            [
                "memory",
                "swap",
                f"{_fmt(None if mem.swap_used_mib is None else mem.swap_used_mib / gib, '.2f')}"
                f" / {mem.swap_total_mib / gib:.2f} GiB",
            ]
        )
    return rows


def _governor_rows(governor: Governor) -> list[list[str]]:
    decision = governor.decision
    return [
        ["governor", "state", governor.state.value],
        ["governor", "pool size", f"{decision.pool_size} of {governor.profile.runtime.streams}"],
        ["governor", "fps cap", _fmt(decision.fps_cap, ".1f") if decision.fps_cap else "none"],
        ["governor", "builds", "allowed" if decision.builds_allowed else "held"],
        ["governor", "shed frames", "yes" if decision.shed_frames else "no"],
    ]


def render_table(
    sample: Sample, governor: Governor, events: list[GovernorEvent], *, how: str = ""
) -> str:
    """The TTY view of one sample ("?" marks an unknown reading)."""
    when = time.strftime("%H:%M:%S", time.localtime(sample.ts)) if sample.ts else "?"
    head = f"edge-agent monitor  profile {governor.profile.name}  source {sample.source}  {when}"
    lines = [head]
    if how:
        lines.append(f"  ({how})")
    rows: list[list[str]] = []
    budget = governor.last_reading.get("power_budget_w") if governor.last_reading else None
    board = _fmt(sample.board_power_w, ".2f", " W")
    if budget is not None:
        board += f" / budget {budget:g} W"
    if sample.board_power_limit_w is not None:
        board += f" (board limit {sample.board_power_limit_w:g} W)"
    rows.append(["power", "board input", board])
    rows.extend(["power", rail, _fmt(w, ".2f", " W")] for rail, w in sorted(sample.power_w.items()))
    rows.extend(["temp", zone, _fmt(c, ".1f", " °C")] for zone, c in sorted(sample.temps_c.items()))
    rows.extend(_memory_rows(sample))
    rows.append(["load", "gpu", _fmt(sample.gpu_load_pct, ".0f", "%")])
    rows.append(["load", "cpu", _fmt(sample.cpu_load_pct, ".0f", "%")])
    rows.append(["power mode", "nvpmodel", sample.power_mode or "?"])
    active = sorted(k for k, v in sample.throttling.items() if v)
    rows.append(
        [
            "throttling",
            "reasons",
            ", ".join(active) if active else ("none" if sample.throttling else "?"),
        ]
    )
    rows.extend(_governor_rows(governor))
    lines.append(format_table(["KIND", "NAME", "VALUE"], rows))
    lines.extend(f"event: {e.action}: {e.reason}" for e in events)
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def _emit(
    out: IO[str],
    sample: Sample,
    governor: Governor,
    *,
    as_json: bool,
    screen: InPlace | None,
    how: str,
) -> None:
    events = governor.update(sample)
    if as_json:
        out.write(json.dumps(sample_line(sample, governor, events), default=str) + "\n")
    else:
        text = render_table(sample, governor, events, how=how)
        if screen is not None:  # redrawn in place: the cursor goes back up, no screen clear
            screen.draw(text.splitlines())
        else:
            out.write(text + "\n")
    out.flush()


def _cmd_monitor(args: argparse.Namespace) -> int:
    if args.attach is not None:
        return run_attach(args)
    out = sys.stdout
    if args.interval is not None and not args.interval > 0:
        raise MonitorArgumentError(
            f"--interval must be > 0, got {args.interval}", fix="pass a positive number of seconds"
        )
    if args.count is not None and args.count < 1:
        raise MonitorArgumentError(f"--count must be >= 1, got {args.count}", fix="pass --count 1")
    root = Path(args.root)
    profile, _l4t, how = resolve_profile(args.profile, args.profiles_dir, root)
    interval = args.interval if args.interval is not None else profile.monitor.interval_s
    count = 1 if args.once else args.count
    tty = out.isatty()
    as_json = args.json or not tty
    screen = InPlace(out) if tty and not as_json and count != 1 else None
    governor = Governor(profile, max_fps=None)
    source = _open_source(profile, root, args.source)
    try:
        if count == 1:
            sampler = Sampler(source, interval, on_sample=lambda _s: None)
            # CPU load and RAPL power are rates: a first reading primes them, the second
            # (a quarter second later) reports them.
            sampler.read_once()
            time.sleep(_ONCE_PRIME_S)
            _emit(out, sampler.read_once(), governor, as_json=as_json, screen=None, how=how)
            return 0
        samples: queue.Queue[Sample] = queue.Queue(maxsize=64)

        def enqueue(sample: Sample) -> None:
            # Only enqueue on the sampler thread; drop when the printer is behind.
            with contextlib.suppress(queue.Full):
                samples.put_nowait(sample)

        sampler = Sampler(source, interval, on_sample=enqueue)
        sampler.start()
        shown = 0
        try:
            while count is None or shown < count:
                try:
                    sample = samples.get(timeout=max(1.0, 5 * interval))
                except queue.Empty:
                    continue
                _emit(out, sample, governor, as_json=as_json, screen=screen, how=how)
                shown += 1
        except KeyboardInterrupt:
            print("", file=sys.stderr)  # end the refreshing table's line; exit 0 below
        finally:
            sampler.stop(timeout=max(2.0, 2 * interval))
        return 0
    finally:
        source.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "monitor",
        help="live power, temperature and memory readings and the governor's decision",
        description="Print live readings: a refreshing table on a TTY, JSON lines otherwise.",
    )
    parser.add_argument("--once", action="store_true", help="print one sample and exit")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between samples (default: the profile's monitor.interval_s; 2 with --attach)",
    )
    parser.add_argument(
        "--source", choices=_SOURCES, default="auto", help="where readings come from"
    )
    parser.add_argument(
        "--root", default="/", help="file-system root to read /proc and /sys from (tests)"
    )
    parser.add_argument(
        "--profile", default="auto", metavar="NAME", help="device profile, or auto to detect"
    )
    parser.add_argument(
        "--profiles-dir", default=None, help="directory of profile YAMLs (default: bundled)"
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N samples")
    _add_attach_args(parser)
    parser.set_defaults(handler=_cmd_monitor)


def _add_attach_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the running daemon (--attach)")
    group.add_argument(
        "--attach",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="show the running daemon's governor and pipeline figures from its Prometheus "
        "endpoint instead of reading this board (default URL: metrics.host:metrics.port of "
        "--config; the daemon needs metrics.enabled: true)",
    )
    group.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"the daemon's agent config (default: {SERVICE_CONFIG} if present, else the "
        "embedded default's 127.0.0.1:9108)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds to wait for the endpoint per scrape (default: 3)",
    )
    group.add_argument(
        "--wait",
        type=float,
        default=15.0,
        metavar="S",
        help="with --once: seconds to wait for the daemon's first report (default: 15)",
    )
