"""Remote commands: ``edge/<fleet>/<device>/cmd/<name>`` → ``.../cmd/response``.

:class:`CommandDispatcher` takes every request on the MQTT client's thread and, at once, either
queues it on a lane or answers it:

* unreadable (over ``max_payload_bytes``, deeper or larger than the JSON bounds, not UTF-8 or
  not JSON) or without a usable ``id``: dropped and counted by reason (nobody could match an
  answer to it);
* over its client's token bucket: ``rate_limited`` with ``retry_after_s``;
* its lane full (in items or bytes): ``busy`` with ``retry_after_s``;
* else queued on its lane (:mod:`agent.comms.commands.lanes`): ``fast`` for cheap read-only
  commands, ``long`` for the rest; OTA messages go to their own ``ota`` lane. The lane's thread
  answers it (:mod:`agent.comms.commands.responder`): exactly one response per request.

The daemon provides the actions through :class:`agent.comms.ports.Control`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.comms.commands.handlers import FAST, LONG, BuiltinHandlers, Handler
from agent.comms.commands.lanes import Lane, LaneLimits
from agent.comms.commands.replay import ReplayStore
from agent.comms.commands.requests import (
    CommandArgs,
    Refused,
    parse_json,
    request_client,
    request_id,
)
from agent.comms.commands.responder import Responder, clean_name
from agent.comms.ports import Control
from agent.comms.ratelimit import ClientRateLimits, RateLimiter
from agent.core.logs import log_fields

log = logging.getLogger(__name__)

OTA = "ota"


@dataclass(frozen=True)
class CommandLimits:
    """Per-client token bucket and the bounds of each lane."""

    per_client_per_s: float = 20.0
    per_client_burst: float = 40.0
    max_clients: int = 1024
    fast: LaneLimits = field(default_factory=lambda: LaneLimits(64, 2 << 20))
    long: LaneLimits = field(default_factory=lambda: LaneLimits(8, 1 << 20))
    ota: LaneLimits = field(default_factory=lambda: LaneLimits(256, 8 << 20))


@dataclass(frozen=True)
class _Command:
    name: str
    raw: Any
    rid: str


def _retry(seconds: float) -> float:
    return round(min(3600.0, max(0.1, math.ceil(seconds * 10) / 10)), 1)


class CommandDispatcher:
    """Takes requests (:meth:`submit`, from any thread, never blocks) and OTA messages
    (:meth:`call_soon`); ``publish(payload_bytes)`` sends a response and must not block.
    :meth:`handle` answers one request synchronously (tests)."""

    def __init__(
        self,
        control: Control | None,
        *,
        device: str,
        publish: Callable[[bytes], None],
        state_dir: Path | None,
        max_payload_bytes: int,
        history: int = 256,
        limits: CommandLimits | None = None,
        clock: Callable[[], float] = time.time,
        extra_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.control = control
        self.device = device
        self._publish = publish
        self.max_payload_bytes = max_payload_bytes
        self.limits = limits = limits or CommandLimits()
        path = None if state_dir is None else Path(state_dir) / "commands.json"
        self.replay = ReplayStore(path, history)
        handlers = BuiltinHandlers(
            control, clock=clock, max_payload_bytes=max_payload_bytes, extra_info=extra_info
        ).table()
        self.responder = Responder(
            handlers, self.replay, device=device, max_payload_bytes=max_payload_bytes, clock=clock
        )
        self.lanes: dict[str, Lane[Any]] = {
            FAST: Lane[_Command](FAST, limits.fast, self._run_command),
            LONG: Lane[_Command](LONG, limits.long, self._run_command),
            OTA: Lane[Callable[[], None]](OTA, limits.ota, lambda call: call()),
        }
        self.clients = ClientRateLimits(
            limits.per_client_per_s, limits.per_client_burst, max_clients=limits.max_clients
        )
        self.busy = 0
        self.rate_limited = 0
        self.dropped: Counter[str] = Counter()
        """Requests and OTA messages dropped unanswered, by reason."""
        self._log_limits: dict[str, RateLimiter] = {}
        self.replay.load()

    @property
    def handlers(self) -> dict[str, Handler]:
        return self.responder.handlers

    @property
    def executed(self) -> int:
        return self.responder.executed

    @property
    def refused(self) -> int:
        return self.responder.refused

    @property
    def worker_errors(self) -> int:
        return sum(lane.errors for lane in self.lanes.values())

    def register(
        self,
        name: str,
        args: type[CommandArgs],
        run: Callable[[Any], Any],
        *,
        lane: str = LONG,
        remember: bool = True,
    ) -> None:
        """Add or replace a command; ``run(validated_args)`` returns JSON-able data."""
        self.handlers[name] = Handler(args, run, lane, remember)

    def start(self) -> None:
        for lane in self.lanes.values():
            lane.start()

    def close(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        for lane in self.lanes.values():
            lane.close(max(0.1, deadline - time.monotonic()))

    def handle(self, name: str, payload: bytes) -> bytes:
        """Validate and execute one request now; returns the response payload."""
        return self.responder.handle(name, payload)

    # ------------------------------------------------------------------ intake (any thread)

    def submit(self, name: str, payload: bytes) -> bool:
        """Take one request: queued (True) or answered/dropped at once (False). Never blocks."""
        name = clean_name(name)
        try:
            raw = parse_json(name, payload, self.max_payload_bytes)
        except Refused as refusal:
            self.drop(name, refusal.reason or refusal.code, size=len(payload))
            return False
        rid = request_id(raw)
        if rid is None:
            self.drop(name, "no_id", size=len(payload))
            return False
        client = request_client(raw)
        wait = self.clients.admit(client)
        if wait is not None:
            self.rate_limited += 1
            self._saturated(name, rid, "rate_limited", wait, client=client)
            return False
        lane = self.lanes[self.responder.lane_of(name) or FAST]
        if not lane.put(_Command(name, raw, rid), len(payload)):
            self.busy += 1
            self._saturated(name, rid, "busy", lane.retry_after_s(), lane=lane.name)
            return False
        return True

    def call_soon(self, name: str, call: Callable[[], None], size: int = 0) -> bool:
        """Run ``call`` on the OTA lane (OTA messages of ``size`` bytes); False when full."""
        if self.lanes[OTA].put(call, size):
            return True
        self.drop(clean_name(name), "ota_lane_full", size=size)
        return False

    def _run_command(self, cmd: _Command) -> None:
        self._publish(self.responder.answer(cmd.name, cmd.raw, cmd.rid))

    def _saturated(self, name: str, rid: str, code: str, wait_s: float, **fields: Any) -> None:
        retry = _retry(wait_s)
        message = (
            "too many requests from this client; retry later"
            if code == "rate_limited"
            else "the command queue is full; retry later"
        )
        self._publish(self.responder.error(rid, name, code, message, retry_after_s=retry))
        if self._may_log(code):
            log.warning(
                "command answered %s",
                code,
                extra=log_fields(
                    id=rid, command=name, retry_after_s=retry, busy=self.busy,
                    rate_limited=self.rate_limited, **fields,
                ),
            )  # fmt: skip

    def drop(self, name: str, reason: str, *, size: int) -> None:
        """Count (and, a few a second, log) one message dropped unanswered."""
        self.dropped[reason] += 1
        if self._may_log(reason):
            log.warning(
                "command dropped: %s",
                reason,
                extra=log_fields(
                    command=name, reason=reason, size=size, dropped=self.dropped[reason]
                ),
            )

    def _may_log(self, kind: str) -> bool:
        """At most a few lines a second per kind, whatever the flood (the counters count all)."""
        limiter = self._log_limits.get(kind)
        if limiter is None:
            limiter = self._log_limits.setdefault(kind, RateLimiter(1.0, 5.0))
        return limiter.take()
