"""The change feed behind ``GET /api/stream`` (server-sent events).

Producers only mark what changed: the intake calls :meth:`ChangeFeed.device_changed` after each
registry change it applied, the rollout driver and the API call :meth:`ChangeFeed.rollout_changed`.
One feed thread turns the marks into events, rendered once for every client:

* ``event: device`` — the device's API answer, at most one per device per ``coalesce_s`` (0.5 s;
  marks in between are merged into the next one); also when a device's ``status`` changed with
  time alone (offline after silence, degraded when stale), found on each summary pass;
* ``event: rollout`` — the rollout's status on every change (merged within one feed pass);
* ``event: summary`` — ``GET /api/summary`` every ``summary_s`` (2 s) and just after a client
  connects; a ``: ping`` comment every ``ping_s`` (15 s).

Each client has a bounded queue: a client that does not keep up (its queue full) is dropped —
its response ends and the browser's ``EventSource`` reconnects and reloads. At most
``max_clients`` at once (the API answers 503 beyond). :meth:`ChangeFeed.stop` ends every
client's response. Nothing is rendered while no client is connected.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.core.logs import log_fields

__all__ = ["ChangeFeed", "FeedSource", "StreamClient", "sse_event"]

log = logging.getLogger(__name__)

CLIENT_QUEUE = 512
"""Events queued per client before it counts as too slow and is dropped."""
_PASS_S = 0.1


def sse_event(name: str, doc: Any) -> bytes:
    """One ``event: <name>`` with ``doc`` as one line of JSON."""
    return (
        f"event: {name}\ndata: {json.dumps(doc, separators=(',', ':'), default=str)}\n\n".encode()
    )


class FeedSource(Protocol):
    """What the feed renders (the controller implements it)."""

    def device_doc(self, device_id: str) -> dict[str, Any] | None: ...

    def rollout_doc(self, rollout_id: str) -> dict[str, Any] | None: ...

    def overview(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every device's answer and the summary, read once."""
        ...


class StreamClient:
    """One connected stream: a bounded queue of encoded events."""

    def __init__(self, max_queued: int = CLIENT_QUEUE) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(max_queued)
        self.closed = threading.Event()
        self.dropped = False

    def offer(self, chunk: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            self.dropped = True
            self.closed.set()

    def next(self, timeout_s: float) -> bytes | None:
        """The next chunk; ``b""`` when none came within ``timeout_s``; None once closed."""
        if self.closed.is_set():
            return None
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None if self.closed.is_set() else b""

    def close(self) -> None:
        self.closed.set()


class ChangeFeed:
    """Marks → coalesced events for up to ``max_clients`` clients (``start`` / ``stop``)."""

    def __init__(
        self,
        source: FeedSource,
        max_clients: int,
        *,
        coalesce_s: float = 0.5,
        summary_s: float = 2.0,
        ping_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_clients = max_clients
        self.coalesce_s, self.summary_s, self.ping_s = coalesce_s, summary_s, ping_s
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: list[StreamClient] = []
        self._devices: set[str] = set()
        self._rollouts: set[str] = set()
        self._sent_at: dict[str, float] = {}
        self._status: dict[str, str] = {}
        self._summary_at = self._ping_at = 0.0
        self._summary_now = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0

    # -- producers (any thread)

    def device_changed(self, device_id: str) -> None:
        with self._lock:
            if self._clients:
                self._devices.add(device_id)

    def rollout_changed(self, rollout_id: str) -> None:
        with self._lock:
            if self._clients:
                self._rollouts.add(rollout_id)

    # -- clients (API threads)

    def subscribe(self) -> StreamClient | None:
        """A new client, or None when ``max_clients`` are connected (or the feed stopped)."""
        with self._lock:
            if len(self._clients) >= self.max_clients or self._stopping.is_set():
                return None
            client = StreamClient()
            self._clients.append(client)
            self._summary_now = True
        return client

    def unsubscribe(self, client: StreamClient) -> None:
        client.close()
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            if not self._clients:
                self._devices.clear()
                self._rollouts.clear()
                self._status.clear()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    # -- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-stream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- the feed thread

    def _run(self) -> None:
        while not self._stopping.wait(_PASS_S):
            if not self.clients:
                continue
            try:
                self._pass(self.clock())
            except Exception:
                log.exception("live stream pass failed")

    def _pass(self, now: float) -> None:
        with self._lock:
            rollouts, self._rollouts = self._rollouts, set()
            due = {d for d in self._devices if now - self._sent_at.get(d, -1e9) >= self.coalesce_s}
            self._devices -= due
            summary = self._summary_now or now - self._summary_at >= self.summary_s
            self._summary_now = False
        for rollout_id in sorted(rollouts):
            doc = self.source.rollout_doc(rollout_id)
            if doc is not None:
                self._broadcast(sse_event("rollout", doc))
        for device_id in sorted(due):
            doc = self.source.device_doc(device_id)
            if doc is not None:
                self._send_device(doc, now)
        if summary:
            self._summary_at = now
            self._overview(now)
        if now - self._ping_at >= self.ping_s:
            self._ping_at = now
            self._broadcast(b": ping\n\n")

    def _overview(self, now: float) -> None:
        devices, summary = self.source.overview()
        for doc in devices:
            device_id, status = str(doc["device"]), str(doc["status"])
            with self._lock:
                known = self._status.setdefault(device_id, status)
            if known != status:  # changed with time alone (clients load the list themselves)
                self._send_device(doc, now)
        self._broadcast(sse_event("summary", summary))

    def _send_device(self, doc: dict[str, Any], now: float) -> None:
        device_id = str(doc["device"])
        with self._lock:
            self._sent_at[device_id] = now
            self._status[device_id] = str(doc["status"])
            self._devices.discard(device_id)
        self._broadcast(sse_event("device", doc))

    def _broadcast(self, chunk: bytes) -> None:
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.offer(chunk)
            if client.dropped:
                self.dropped += 1
                self.unsubscribe(client)
                log.warning(
                    "live stream client too slow; dropped", extra=log_fields(dropped=self.dropped)
                )
        self.sent += 1
