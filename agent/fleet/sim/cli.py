"""``edge-agent fleet simulate``: N simulated devices in one process, for load tests of a broker
and a controller. Prints one JSON progress line every ``--progress`` seconds (sessions, update
outcomes) and stops cleanly (retained ``offline``/``shutdown``) on SIGINT/SIGTERM or after
``--duration``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from agent.core.errors import EdgeAgentError
from agent.fleet.sim.config import MAX_SESSIONS_PER_PROCESS, SimConfig
from agent.fleet.sim.fleet import SimFleet
from agent.fleet.sim.shards import ShardSet, shard_argv, shard_plan
from agent.ota.trust import TrustStore

__all__ = ["add_simulate_arguments", "config_from_args", "main", "run_simulate"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``edge-agent fleet simulate``."""
    p.add_argument("--devices", type=int, default=10, help="how many devices (default 10)")
    p.add_argument("--mqtt-url", required=True, help="mqtt://host:port")
    p.add_argument("--trust-dir", type=Path, required=True, help="public keys (NAME.pub)")
    p.add_argument("--fleet", default="sim", help="fleet name (default sim)")
    p.add_argument("--prefix", default="sim", help="device id prefix: PREFIX-0000, ...")
    p.add_argument(
        "--group", dest="groups", action="extend", nargs="+", default=[], metavar="G",
        help="OTA groups, assigned to the devices round-robin (repeatable)",
    )  # fmt: skip
    p.add_argument("--model", default="shapes-cls", help="model name served (default shapes-cls)")
    p.add_argument("--version", type=int, default=1, help="model version served at start")
    p.add_argument("--fps", type=_positive, default=30.0, help="fps served at start (about)")
    p.add_argument("--interval", type=_positive, default=5.0, help="metrics interval, s")
    p.add_argument("--step", type=float, default=0.5, help="time per OTA state, s")
    p.add_argument("--fail-rate", type=_rate, default=0.0, help="share of updates that fail")
    p.add_argument(
        "--nan-rate", type=_rate, default=0.0, help="share rolled back with probation_nan"
    )
    p.add_argument("--slow-rate", type=_rate, default=0.0, help="share that serve slower")
    p.add_argument("--slow-factor", type=_positive, default=0.5, help="their fps factor")
    p.add_argument(
        "--bad-gate-rate", type=_rate, default=0.0,
        help="share of successful updates whose gate reports task_drop 0.2",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--duration", type=_positive, default=None, help="stop after this many s")
    p.add_argument("--progress", type=_positive, default=5.0, help="progress line every S s")
    p.add_argument(
        "--per-process", type=int, default=MAX_SESSIONS_PER_PROCESS,
        help=f"devices per process; more run in child processes (at most "
        f"{MAX_SESSIONS_PER_PROCESS}, the default)",
    )  # fmt: skip
    p.add_argument("--first-index", type=int, default=0, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` of parsed arguments (EdgeAgentError when out of range)."""
    return SimConfig(
        mqtt_url=args.mqtt_url,
        trust_dir=args.trust_dir,
        devices=args.devices,
        first_index=args.first_index,
        fleet=args.fleet,
        prefix=args.prefix,
        groups=tuple(args.groups),
        model=args.model,
        version=args.version,
        fps=args.fps,
        interval_s=args.interval,
        step_s=args.step,
        fail_rate=args.fail_rate,
        nan_rate=args.nan_rate,
        slow_rate=args.slow_rate,
        slow_factor=args.slow_factor,
        bad_gate_rate=args.bad_gate_rate,
        seed=args.seed,
    )


@contextmanager
def _stop_on_signals(done: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``done`` (main thread only); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        done.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextmanager
def _quiet_sessions() -> Iterator[None]:
    """One log line per session and reconnect is noise at fleet scale: warnings only."""
    logger = logging.getLogger("agent.comms.mqtt")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _ticks(done: threading.Event, deadline: float | None, every_s: float) -> Iterator[None]:
    """One tick every ``every_s`` until ``done`` is set or ``deadline`` passes."""
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if done.wait(every_s if left is None else max(0.0, min(every_s, left))):
            return
        if left is not None and left <= every_s:
            return
        yield


def _print_line(progress: dict[str, int], started: float, *, final: bool = False) -> None:
    line: dict[str, Any] = {"t": round(time.monotonic() - started, 1), **progress}
    if final:
        line["final"] = True
    print(json.dumps(line), flush=True)


def _run_in_process(cfg: SimConfig, args: argparse.Namespace, done: threading.Event) -> int:
    fleet = SimFleet(cfg)
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    with _quiet_sessions(), fleet:
        for _ in _ticks(done, deadline, args.progress):
            _print_line(fleet.progress().as_dict(), started)
        _print_line(fleet.progress().as_dict(), started, final=True)
    return 0


def _run_sharded(args: argparse.Namespace, done: threading.Event) -> int:
    plan = shard_plan(args.devices, args.per_process)
    shards = ShardSet([shard_argv(args, i, first, n) for i, (first, n) in enumerate(plan)])
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    shards.start()
    try:
        for _ in _ticks(done, deadline, args.progress):
            _print_line(shards.progress(), started)
            if shards.failed():
                print("error: a simulator process exited", file=sys.stderr)
                break
        _print_line(shards.progress(), started, final=True)
    finally:
        code = shards.stop()
    return code


def run_simulate(args: argparse.Namespace) -> int:
    """Run a simulated fleet until SIGINT/SIGTERM (or ``--duration``): 0; 2 on a usage error.
    More than ``--per-process`` devices run in child processes (:mod:`.shards`)."""
    if not 1 <= args.per_process <= MAX_SESSIONS_PER_PROCESS:
        print(f"error: --per-process must be 1..{MAX_SESSIONS_PER_PROCESS}", file=sys.stderr)
        return 2
    sharded = args.devices > args.per_process
    try:  # the first shard's config: usage errors before anything starts
        probe = argparse.Namespace(**{**vars(args), "devices": min(args.devices, args.per_process)})
        cfg = config_from_args(probe)
        TrustStore.load(cfg.trust_dir)
    except EdgeAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    with _stop_on_signals(done):
        return _run_sharded(args, done) if sharded else _run_in_process(cfg, args, done)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.fleet.sim``: the same as ``edge-agent fleet simulate``."""
    parser = argparse.ArgumentParser(
        prog="edge-agent fleet simulate",
        description="Simulated devices that speak the MQTT contract (docs/telemetry.md).",
    )
    add_simulate_arguments(parser)
    return run_simulate(parser.parse_args(argv))
