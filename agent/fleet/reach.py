"""Who a push is for and whom it reached (``edge-agent push`` with a broker).

:class:`PushWatch` is one short broker session of the operator. It subscribes to the targets'
retained ``state`` (birth / last will) and ``model`` (OTA record) topics — one device's, or
``edge/<fleet>/+/...`` for a group push — and then:

* :meth:`PushWatch.discover` reads the retained births for a bounded time: the devices the
  broker knows, online or offline, and their ``group`` (a birth without one is in no group);
* :func:`check_targets` turns that into the push's targets, refusing an unknown device
  (:class:`UnknownTargetError`, exit 2) unless the operator allows it;
* :meth:`PushWatch.follow` waits (bounded) for the targets' OTA records of this manifest and
  returns a :class:`ReachReport`: reached (with the OTA state), rejected (with the reason),
  silent (online, no answer) and offline (their retained state says so).

A device's records before the push are remembered, so an old retained record is never taken
for an answer. Records refused after the signature check (``wrong_target``, ``not_newer``,
``expired`` ...) carry no ``manifest_sha256``; a *new* record with this manifest's model and
version counts as the answer then. Every message is parsed within bounds, as untrusted.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from agent.comms.diagnose import diagnose_connection
from agent.comms.mqtt import MqttClient
from agent.comms.topics import ANY, Topics
from agent.config.broker import MqttConfig, check_device_id
from agent.core.closing import Closeable
from agent.core.errors import CommsError, EdgeAgentError
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text
from agent.fleet.registry.records import OtaStatus
from agent.fleet.registry.wire import BadMessage, parse_ota, parse_state, require_envelope

__all__ = [
    "Answer",
    "KnownDevice",
    "PushWatch",
    "ReachReport",
    "UnknownTargetError",
    "check_targets",
]

LIMITS = JsonLimits(max_bytes=256 * 1024, max_depth=16, max_items=20_000)
REFUSED = frozenset({"rejected", "failed", "rolled_back"})
FINAL = REFUSED | {"active"}


class UnknownTargetError(EdgeAgentError):
    """The push names a device (or a group) the broker knows nothing about."""

    exit_code = 2


@dataclass(frozen=True)
class KnownDevice:
    """A device as its retained ``state`` message describes it."""

    device: str
    online: bool
    group: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Answer:
    """A target's OTA record of this push."""

    device: str
    state: str
    reason: str | None
    detail: str
    version: int | None

    @property
    def refused(self) -> bool:
        return self.state in REFUSED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "version": self.version}
        if self.refused:
            out.update(reason=self.reason, detail=self.detail)
        return out


@dataclass(frozen=True)
class ReachReport:
    """Whom the push reached after the wait."""

    targets: tuple[str, ...]
    reached: dict[str, Answer]
    rejected: dict[str, Answer]
    silent: tuple[str, ...]
    offline: tuple[str, ...]
    unknown: tuple[str, ...]
    waited_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets),
            "reached": {d: a.to_json() for d, a in self.reached.items()},
            "rejected": {d: a.to_json() for d, a in self.rejected.items()},
            "silent": list(self.silent),
            "offline": list(self.offline),
            "unknown": list(self.unknown),
            "waited_s": round(self.waited_s, 1),
        }

    def lines(self) -> list[str]:
        """The report in words, one line per device."""
        out = [f"reached   {d}: {a.state} (v{a.version})" for d, a in self.reached.items()]
        out += [
            f"rejected  {d}: {a.state} {a.reason or ''} {a.detail}".rstrip()
            for d, a in self.rejected.items()
        ]
        out += [f"silent    {d}: online, no answer in {self.waited_s:.0f} s" for d in self.silent]
        out += [f"offline   {d}: gets a retained push when it connects" for d in self.offline]
        out += [f"unknown   {d}: never seen by the broker, no answer" for d in self.unknown]
        return out


def check_targets(
    known: dict[str, KnownDevice],
    *,
    fleet: str,
    device: str | None,
    group: str | None,
    allow_unknown: bool,
) -> tuple[str, ...]:
    """The push's target devices (sorted); :class:`UnknownTargetError` when the device is not
    known to the broker (or no known device is in the group) and ``allow_unknown`` is off."""
    if device is not None:
        if device not in known and not allow_unknown:
            raise UnknownTargetError(
                f"device {device!r} is unknown to the broker (no retained state on "
                f"{Topics(fleet, device).state}): a typo, the wrong --fleet, or a device that "
                "never connected",
                fix="check the id and --fleet; pass --allow-unknown to push anyway (e.g. to a "
                "device not yet provisioned; add --retain so it gets the push when it connects)",
            )
        return (device,)
    members = tuple(sorted(d for d, k in known.items() if k.group == group))
    if not members and not allow_unknown:
        raise UnknownTargetError(
            f"no device of fleet {fleet!r} known to the broker announces group {group!r} in "
            "its birth message",
            fix="check the group name and --fleet; pass --allow-unknown to push anyway",
        )
    return members


class PushWatch(Closeable):
    """One operator session on the targets' ``state`` and ``model`` topics."""

    def __init__(self, cfg: MqttConfig, fleet: str, *, device: str | None) -> None:
        self.fleet = fleet
        self.device = device
        t = Topics(fleet, device or ANY)
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=100_000)
        self._failed = threading.Event()
        self.known: dict[str, KnownDevice] = {}
        self.records: dict[str, OtaStatus] = {}
        self._before: dict[str, str] = {}
        self.client = MqttClient(
            cfg,
            client_id=f"edge-agent-push-watch-{uuid.uuid4().hex[:12]}",
            subscriptions=[(t.state, 1), (t.model, 1)],
            on_message=self._enqueue,
            on_connect_failed=self._failed.set,
        )

    def _enqueue(self, topic: str, payload: bytes) -> None:
        with contextlib.suppress(queue.Full):  # bounded: a flood is dropped, the report says less
            self._queue.put_nowait((topic, payload))

    def open(self, timeout_s: float) -> PushWatch:
        """Connect; :class:`CommsError` (with the fix, never a password) when it cannot."""
        self.client.start()
        deadline = time.monotonic() + timeout_s
        while not self.client.wait_connected(0.05):
            refused = self.client.last_error
            if refused is not None:
                raise CommsError(
                    refused,
                    fix="check --mqtt-username and the password file/variable, or the client "
                    "certificate (--mqtt-cert/--mqtt-key), and the broker's ACL",
                )
            if self._failed.is_set() or time.monotonic() > deadline:
                problem = diagnose_connection(self.client.cfg, timeout_s=min(5.0, timeout_s))
                if problem is not None or time.monotonic() > deadline:
                    raise CommsError(
                        problem or f"no connection to the broker within {timeout_s:g} s",
                        fix="check --mqtt-url, the TLS options and that the broker runs",
                    )
                self._failed.clear()
        return self

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ messages

    def _drain(self, timeout_s: float) -> None:
        """Take the messages that arrive within ``timeout_s`` (at least the queued ones)."""
        try:
            item = self._queue.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return
        while True:
            self._take(*item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _take(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or not payload:
            return
        device, leaf = parts[2], parts[3]
        try:
            check_device_id(device)
            doc = require_envelope(loads_bounded(payload, LIMITS), leaf, device)
            if leaf == "state":
                state = parse_state(doc)
                group = doc.get("group")
                self.known[device] = KnownDevice(
                    device=device,
                    online=state.online,
                    group=sanitize_text(group, max_len=64) if isinstance(group, str) else None,
                    reason=state.reason,
                )
            elif leaf == "model":
                self.records[device] = parse_ota(doc)
        except (ValueError, JsonRejected, BadMessage, KeyError):
            return  # a malformed or foreign message tells nothing about the push

    # ------------------------------------------------------------------ phases

    def discover(self, wait_s: float) -> dict[str, KnownDevice]:
        """The devices whose retained state arrives within ``wait_s`` (a device push ends as
        soon as that device's state is in)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self._drain(min(0.05, deadline - time.monotonic()))
            if self.device is not None and self.device in self.known:
                break
        self._drain(0.0)
        self._before = {d: r.id for d, r in self.records.items()}
        return dict(self.known)

    def follow(
        self, sha: str, *, model: str, version: int, targets: tuple[str, ...], wait_s: float
    ) -> ReachReport:
        """Wait up to ``wait_s`` for the targets' records of the manifest ``sha`` (``model``
        v``version``); ends early once every target's record is final. Records already there
        at :meth:`discover` are not answers."""
        before = self._before
        answers: dict[str, Answer] = {}
        start = time.monotonic()
        deadline = start + wait_s
        while True:
            for device, rec in self.records.items():
                if _answers(rec, sha, model, version, before.get(device)):
                    answers[device] = Answer(device, rec.state, rec.reason, rec.detail, rec.version)
            done = bool(targets) and all(
                d in answers and answers[d].state in FINAL for d in targets
            )
            left = deadline - time.monotonic()
            if done or left <= 0:
                break
            self._drain(min(0.1, left))
        return self._report(targets, answers, time.monotonic() - start)

    def _report(
        self, targets: tuple[str, ...], answers: dict[str, Answer], waited_s: float
    ) -> ReachReport:
        quiet = [d for d in targets if d not in answers]
        return ReachReport(
            targets=targets,
            reached={d: a for d, a in sorted(answers.items()) if not a.refused},
            rejected={d: a for d, a in sorted(answers.items()) if a.refused},
            silent=tuple(d for d in quiet if d in self.known and self.known[d].online),
            offline=tuple(d for d in quiet if d in self.known and not self.known[d].online),
            unknown=tuple(d for d in quiet if d not in self.known),
            waited_s=waited_s,
        )


def _final(answer: Answer | None) -> bool:
    return answer is not None and answer.state in FINAL


def _answers(rec: OtaStatus, sha: str, model: str, version: int, old_id: str | None) -> bool:
    """Whether ``rec`` is the device's record of this push."""
    if rec.manifest_sha256 is not None:
        return rec.manifest_sha256 == sha
    return rec.id != old_id and rec.op == "update" and rec.model == model and rec.version == version
