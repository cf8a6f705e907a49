"""A simulated fleet larger than one process can hold (:data:`MAX_SESSIONS_PER_PROCESS`): the
devices are split into contiguous shards, each run by a child ``python -m agent.fleet.sim``
with ``--first-index``, so ids and round-robin groups are the same as in one process. The
parent sums the children's JSON progress lines and stops them (SIGTERM) when it stops."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["ShardSet", "shard_argv", "shard_plan"]

_STOP_TIMEOUT_S = 60.0


def shard_plan(devices: int, per_process: int) -> list[tuple[int, int]]:
    """(first index, device count) of each shard, as even as possible."""
    shards = -(-devices // per_process)
    base, extra = divmod(devices, shards)
    plan: list[tuple[int, int]] = []
    first = 0
    for i in range(shards):
        count = base + (1 if i < extra else 0)
        plan.append((first, count))
        first += count
    return plan


def shard_argv(args: argparse.Namespace, shard: int, first: int, count: int) -> list[str]:
    """The child's command line: the parent's options for its share (no ``--duration``: the
    parent stops every child itself)."""
    argv = [sys.executable, "-m", "agent.fleet.sim", "--devices", str(count)]
    argv += ["--first-index", str(first), "--mqtt-url", args.mqtt_url]
    argv += ["--trust-dir", str(args.trust_dir), "--fleet", args.fleet, "--prefix", args.prefix]
    if args.groups:
        argv += ["--group", *args.groups]
    options: dict[str, Any] = {
        "--model": args.model,
        "--version": args.version,
        "--fps": args.fps,
        "--interval": args.interval,
        "--step": args.step,
        "--fail-rate": args.fail_rate,
        "--nan-rate": args.nan_rate,
        "--slow-rate": args.slow_rate,
        "--slow-factor": args.slow_factor,
        "--bad-gate-rate": args.bad_gate_rate,
        "--progress": args.progress,
    }
    if args.seed is not None:
        options["--seed"] = args.seed + shard
    for flag, value in options.items():
        argv += [flag, str(value)]
    return argv


@dataclass
class _Child:
    proc: subprocess.Popen[str]
    last: dict[str, Any] = field(default_factory=dict[str, Any])
    reader: threading.Thread | None = None


class ShardSet:
    """The child processes of one sharded run; ``start``, ``progress``, ``stop``."""

    def __init__(self, argvs: Sequence[list[str]]) -> None:
        self.argvs = list(argvs)
        self.children: list[_Child] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for argv in self.argvs:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
            child = _Child(proc)
            assert proc.stdout is not None
            child.reader = threading.Thread(
                target=self._read, args=(child, proc.stdout), name="fleet-sim-shard", daemon=True
            )
            child.reader.start()
            self.children.append(child)

    def _read(self, child: _Child, stream: IO[str]) -> None:
        for line in stream:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                with self._lock:
                    child.last = doc  # pyright: ignore[reportUnknownMemberType]

    def progress(self) -> dict[str, int]:
        """The children's last progress lines, summed (devices, connected, outcomes)."""
        total: dict[str, int] = {}
        with self._lock:
            for child in self.children:
                for key, value in child.last.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        total[key] = total.get(key, 0) + value
        return total

    def failed(self) -> bool:
        """A child that already exited (before it was asked to stop)."""
        return any(c.proc.poll() is not None for c in self.children)

    def stop(self) -> int:
        """SIGTERM every child, wait (bounded; SIGKILL after); the worst exit status."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.terminate()
        worst = 0
        for child in self.children:
            try:
                code = child.proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                code = child.proc.wait(_STOP_TIMEOUT_S)
            if child.reader is not None:
                child.reader.join(5.0)
            worst = max(worst, abs(code))
        return worst
