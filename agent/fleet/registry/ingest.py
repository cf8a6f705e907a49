"""Device messages → registry updates: ``edge/<fleet>/+/state|metrics|events|model``.

:class:`RegistryIngest` is called once per received message (from the controller's consumer
thread, never from the MQTT network thread: rule 14). It checks the topic, parses the payload
within bounds (:func:`agent.core.jsonlimits.loads_bounded`), reads the fields it needs
(:mod:`.wire`), lets the pure rules of :mod:`.merge` decide, and writes through the
:class:`~.store.RegistryStore` in one atomic read-modify-write. Nothing a device sends can
raise out of :meth:`RegistryIngest.handle`: a message that cannot be taken is counted by
reason (``counts()``) and logged a few times at most.

An :class:`IngestObserver` (the controller's history recorder) is told, after the store's
write, of every applied metrics message and event and of every OTA report parsed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.comms import topics
from agent.config.base import NAME_PATTERN
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text
from agent.fleet.registry.merge import (
    OTA_EVENT,
    Merge,
    Outcome,
    merge_event,
    merge_metrics,
    merge_ota,
    merge_state,
)
from agent.fleet.registry.records import DeviceRecord, MetricsSnapshot, OtaStatus
from agent.fleet.registry.store import RegistryStore
from agent.fleet.registry.wire import (
    BadMessage,
    EventMessage,
    envelope_ts,
    parse_event,
    parse_metrics,
    parse_ota,
    parse_state,
    require_envelope,
)

__all__ = [
    "INGEST_LIMITS",
    "IngestObserver",
    "IngestResult",
    "RegistryIngest",
    "registry_subscriptions",
]

log = logging.getLogger(__name__)

INGEST_LIMITS = JsonLimits(max_bytes=256 * 1024, max_depth=16, max_items=20_000)
"""Bounds for one device message (a metrics message of many sources stays far below)."""

LEAVES = (topics.STATE, topics.METRICS, topics.EVENTS, topics.MODEL)
_DEVICE = re.compile(NAME_PATTERN)
_MAX_WARNINGS = 20


def registry_subscriptions(fleet: str, share_group: str | None = None) -> list[tuple[str, int]]:
    """The filters (QoS 1) the registry reads: ``edge/<fleet>/+/<leaf>`` for each leaf, under
    ``$share/<group>/`` when several controllers split the load (MQTT 5 shared subscriptions)."""
    prefix = "" if share_group is None else f"$share/{share_group}/"
    base = topics.device_base(fleet, topics.ANY)
    return [(f"{prefix}{base}/{leaf}", 1) for leaf in LEAVES]


class IngestObserver(Protocol):
    """Told what the ingest took (on the ingest thread, after the store's write); must not
    raise."""

    def metrics(self, device: str, snapshot: MetricsSnapshot, now: float) -> None: ...

    def event(self, device: str, event: EventMessage) -> None: ...

    def ota(self, device: str, status: OtaStatus) -> None: ...


Rule = Callable[[DeviceRecord | None], Merge]
Note = Callable[[Outcome], None]


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    device: str | None = None
    reason: str | None = None
    """For ``rejected`` / ``ignored``: the counter label (``bad_topic``, ``not_json``, ...)."""


def _split_topic(fleet: str, topic: str) -> tuple[str, str]:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != topics.ROOT or parts[3] not in LEAVES:
        raise BadMessage("bad_topic", sanitize_text(topic))
    if parts[1] != fleet:
        raise BadMessage("wrong_fleet", sanitize_text(parts[1], max_len=64))
    device = parts[2]
    if not _DEVICE.fullmatch(device) or device in topics.LAYOUT_WORDS:
        raise BadMessage("bad_device_id", sanitize_text(device, max_len=64))
    return device, parts[3]


class RegistryIngest:
    """Feeds one fleet's device messages into a :class:`RegistryStore`."""

    def __init__(
        self,
        store: RegistryStore,
        fleet: str,
        *,
        clock: Callable[[], float] = time.time,
        limits: JsonLimits = INGEST_LIMITS,
        observer: IngestObserver | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        self.fleet = fleet
        self.clock = clock
        self.limits = limits
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._warned = 0

    def counts(self) -> dict[str, int]:
        """Messages by outcome (``applied``, ``duplicate``, ``stale``) and rejections by reason
        (``rejected.<reason>``); ``rejected`` is their total."""
        with self._lock:
            return dict(self._counts)

    def handle(self, topic: str, payload: bytes) -> IngestResult:
        """Take one message; never raises for anything the device sent."""
        device: str | None = None
        try:
            device, leaf = _split_topic(self.fleet, topic)
            doc = require_envelope(loads_bounded(payload, self.limits), leaf, device)
            merge = self._apply(device, leaf, doc)
        except JsonRejected as exc:
            return self._reject(device, exc.reason, exc.detail)
        except BadMessage as exc:
            return self._reject(device, exc.reason, str(exc))
        self._count(merge.outcome.value)
        return IngestResult(merge.outcome, device)

    def _apply(self, device: str, leaf: str, doc: dict[str, Any]) -> Merge:
        rule, note = self._rule(device, leaf, doc)
        result: list[Merge] = []

        def change(current: DeviceRecord | None) -> DeviceRecord | None:
            merge = rule(current)
            result.append(merge)
            return merge.record

        self.store.update(self.fleet, device, change)
        if note is not None:
            note(result[-1].outcome)
        return result[-1]

    def _rule(self, device: str, leaf: str, doc: dict[str, Any]) -> tuple[Rule, Note | None]:
        """Parse first (outside the store's transaction), then the pure merge as a closure and
        what to tell the observer once it is written."""
        fleet, now, seen = self.fleet, self.clock(), self.observer
        if leaf == topics.STATE:
            state = parse_state(doc)
            return (lambda cur: merge_state(cur, fleet, device, state, now)), None
        if leaf == topics.METRICS:
            metrics = parse_metrics(doc)
            note = None
            if seen is not None:
                note = _when_applied(lambda: seen.metrics(device, metrics.snapshot, now))
            return (lambda cur: merge_metrics(cur, fleet, device, metrics, now)), note
        if leaf == topics.MODEL:
            status = parse_ota(doc)
            ts = envelope_ts(doc)
            at = now if ts is None else min(ts, now)
            note = None if seen is None else (lambda _o: seen.ota(device, status))
            return (lambda cur: merge_ota(cur, fleet, device, status, at)), note
        event = parse_event(doc)
        ota = parse_ota(event.data) if event.kind == OTA_EVENT else None
        note = (
            None if seen is None else _when_applied(lambda: _tell_event(seen, device, event, ota))
        )
        return (lambda cur: merge_event(cur, fleet, device, event, now, ota=ota)), note

    def _count(self, *labels: str) -> None:
        with self._lock:
            for label in labels:
                self._counts[label] += 1

    def _reject(self, device: str | None, reason: str, detail: str) -> IngestResult:
        self._count(Outcome.REJECTED.value, f"{Outcome.REJECTED.value}.{reason}")
        if self._warned < _MAX_WARNINGS:
            self._warned += 1
            log.warning(
                "device message refused: %s (device %s): %s",
                reason,
                device or "?",
                sanitize_text(detail, max_len=200),
            )
        return IngestResult(Outcome.REJECTED, device, reason)


def _when_applied(tell: Callable[[], None]) -> Note:
    def note(outcome: Outcome) -> None:
        if outcome is Outcome.APPLIED:
            tell()

    return note


def _tell_event(
    observer: IngestObserver, device: str, event: EventMessage, ota: OtaStatus | None
) -> None:
    observer.event(device, event)
    if ota is not None:
        observer.ota(device, ota)
