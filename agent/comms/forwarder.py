"""Store and forward: publishes spooled records in order and acknowledges them on PUBACK.

:class:`SpoolForwarder` runs one thread that keeps at most ``window`` records awaiting PUBACK.
A record leaves the spool only when the broker acknowledged it (or refused it: MQTT 5 PUBACK
failure, counted in ``rejected``). A rebuilt paho client (``client.epoch`` changed) lost its
in-flight messages: they are sent again from the first unacknowledged record.

With a lifetime (``mqtt.telemetry_expiry_s``) a record whose age (now − its payload's ``ts``)
reached it is dropped instead of sent (acknowledged in the spool, counted in ``expired``); the
others carry the rest of their lifetime as the MQTT 5 message expiry interval, so a broker
holding them for an offline subscriber drops them in time too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from agent.comms.mqtt import MqttClient
from agent.comms.payloads import payload_ts
from agent.comms.spool import Record, Spool
from agent.core.logs import log_fields

log = logging.getLogger(__name__)

_EARLY_ACK_KEEP_S = 5.0
_BATCH = 64
_IDLE_WAIT_S = 0.05


class SpoolForwarder:
    """Moves records from the spool to the MQTT client. ``on_published`` is paho's callback;
    ``wake()`` is called by anyone who changed something the forwarder waits for."""

    def __init__(
        self,
        spool: Spool,
        *,
        window: int,
        lifetime_s: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.window = window
        self.lifetime_s = lifetime_s
        self.clock = clock
        self.sent = 0
        self.rejected = 0
        self.expired = 0
        """Records older than ``lifetime_s`` dropped instead of sent."""
        self._client: MqttClient | None = None
        self._inflight: dict[int, int] = {}
        self._early: OrderedDict[int, tuple[bool, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, client: MqttClient) -> None:
        self._client = client
        self._thread = threading.Thread(target=self._forward, name="edge-mqtt-fwd", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def wait(self, timeout_s: float) -> None:
        """Sleep until woken or ``timeout_s`` passed."""
        with self._wake:
            self._wake.wait(timeout_s)

    # ------------------------------------------------------------------ forwarder thread

    def _forward(self) -> None:
        """Publish spooled records in order, keeping at most ``window`` awaiting PUBACK."""
        assert self._client is not None
        spool, client = self.spool, self._client
        epoch, cursor = client.epoch, spool.acked_below
        while not self._stop.is_set():
            try:
                spool.maybe_sync()
                if client.epoch != epoch:  # a rebuilt paho client lost its in-flight messages
                    with self._lock:
                        self._inflight.clear()
                    epoch, cursor = client.epoch, spool.acked_below
                if not client.connected or len(self._inflight) >= self.window:
                    self.wait(_IDLE_WAIT_S)
                    continue
                records = spool.read(cursor, min(_BATCH, self.window - len(self._inflight)))
                if not records:
                    self.wait(_IDLE_WAIT_S)
                    continue
                cursor = self._send(client, records, cursor)
            except Exception:
                log.exception("mqtt forwarder error; continuing")
                time.sleep(0.5)

    def expiry_s(self, rec: Record) -> int | None:
        """Seconds ``rec`` has left to live (0: expired), None when it never expires."""
        if self.lifetime_s <= 0:
            return None
        ts = payload_ts(rec.payload)
        if ts is None:
            return None
        return max(0, math.ceil(ts + self.lifetime_s - self.clock()))

    def _send(self, client: MqttClient, records: list[Record], cursor: int) -> int:
        """Publish ``records``; returns the cursor after the last one paho took."""
        expired = 0
        for rec in records:
            expiry = self.expiry_s(rec)
            if expiry == 0:
                self.spool.ack(rec.id)
                expired, cursor = expired + 1, rec.id + 1
                continue
            info = client.publish(rec.topic, rec.payload, rec.qos, rec.retain, expiry_s=expiry)
            if info is None:
                break
            with self._lock:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._inflight[info.mid] = rec.id
            if early is not None:
                self._acked(rec.id, early[0])
            cursor = rec.id + 1
        if expired:
            with self._lock:
                self.expired += expired
            log.warning(
                "spooled messages outlived mqtt.telemetry_expiry_s; dropped",
                extra=log_fields(expired=expired, total_expired=self.expired),
            )
        return cursor

    def _acked(self, rid: int, ok: bool) -> None:
        self.spool.ack(rid)
        with self._lock:  # counted from paho's thread and the forwarder
            if ok:
                self.sent += 1
            else:
                self.rejected += 1

    # ------------------------------------------------------------------ paho thread

    def on_published(self, mid: int, ok: bool, reason: str) -> None:
        """PUBACK (or QoS 0 sent) for ``mid``: only bookkeeping. An ack that arrives before
        the forwarder recorded the ``mid`` is kept for a few seconds."""
        with self._lock:
            rid = self._inflight.pop(mid, None)
            if rid is None:
                now = time.monotonic()
                self._early[mid] = (ok, now)
                while self._early and next(iter(self._early.values()))[1] < now - _EARLY_ACK_KEEP_S:
                    self._early.popitem(last=False)
        if rid is not None:
            self._acked(rid, ok)
            if not ok:
                log.error(
                    "broker refused a message; dropped from the spool",
                    extra=log_fields(seq=rid, reason=reason),
                )
        self.wake()
