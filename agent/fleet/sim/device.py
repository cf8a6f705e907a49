"""One simulated device: a broker session (:class:`agent.comms.mqtt.MqttClient`, the project's
only paho wrapper), a serving model and an update record.

It does on the wire what a daemon does: retained ``state`` ``online`` (with its ``group``) on
every connection and the will ``offline``/``lost`` left with the broker, ``offline``/
``shutdown`` on a clean stop; the retained ``model`` record re-published on every connection;
metrics every ``interval_s`` from a random phase; OTA (:mod:`agent.fleet.sim.ota`) and
commands (:mod:`agent.fleet.sim.commands`). The network thread only enqueues on the shared
scheduler.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from agent.comms.mqtt import MqttClient
from agent.comms.topics import Topics
from agent.core.logs import log_fields
from agent.fleet.sim.commands import handle_command
from agent.fleet.sim.config import SimConfig
from agent.fleet.sim.context import DeviceContext
from agent.fleet.sim.ota import handle_ota
from agent.fleet.sim.record import DeviceState, Serving, SimCounters, engine_hash
from agent.fleet.sim.scheduler import Scheduler
from agent.fleet.sim.wire import DeviceWire
from agent.ota.trust import TrustStore

__all__ = ["SimDevice"]

log = logging.getLogger(__name__)


class SimDevice:
    """Device ``index`` of ``cfg``: ``start()`` connects; ``go_offline``/``go_online`` drop
    and renew the session while the device lives on (an update under way keeps walking)."""

    def __init__(
        self,
        cfg: SimConfig,
        index: int,
        *,
        trust: TrustStore,
        sched: Scheduler,
        rng: random.Random,
        counters: SimCounters,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.device_id(index)
        self.group = cfg.group_of(index)
        own = random.Random(rng.random())
        self.topics = Topics(cfg.fleet, self.id, self.group)
        self.wire = DeviceWire(self.id, self.topics, boot=own.randint(1, 1000))
        self.state = DeviceState(Serving(cfg.version, cfg.fps * own.uniform(0.9, 1.1)))
        self.ctx = DeviceContext(
            cfg, self.id, self.group, trust, sched, own, self.wire, self.state, counters
        )
        self.frames = 0
        self._lock = threading.Lock()

    @property
    def client(self) -> MqttClient | None:
        return self.wire.client

    @property
    def connected(self) -> bool:
        client = self.wire.client
        return client is not None and client.connected

    @property
    def serving_version(self) -> int:
        return self.state.serving.version

    @property
    def record(self) -> dict[str, Any] | None:
        record = self.state.record
        return None if record is None else record.as_dict()

    # -- lifecycle

    def start(self) -> None:
        self._connect()
        phase = self.ctx.rng.uniform(0.0, self.cfg.interval_s)
        self.ctx.sched.soon(self._metrics_tick, phase)

    def _connect(self) -> None:
        """A fresh session (clean start): birth on CONNACK, the retained manifests arrive."""
        topics = self.topics
        subs = [(topics.ota, 1), (topics.cmd_filter, 1)]
        if topics.group_ota is not None:
            subs.append((topics.group_ota, 1))
        client = MqttClient(
            self.cfg.mqtt(self.id),
            client_id=self.id,
            will=self.wire.will(),
            subscriptions=subs,
            on_message=self._on_message,
            on_connected=lambda: self.ctx.sched.soon(self._birth),
        )
        with self._lock:
            self.wire.client = client
            self.state.online = True
        client.start()

    def _disconnect(self, reason: str) -> None:
        with self._lock:
            client = self.wire.client
            self.state.online = False
        if client is None:
            return
        self.wire.offline(reason)
        client.close()

    def stop(self) -> None:
        """Clean shutdown: retained ``offline``/``shutdown``, then disconnect."""
        self.state.stopped = True
        self._disconnect("shutdown")

    def go_offline(self, *, clean: bool = False) -> None:
        """Leave the broker: ``offline``/``shutdown`` when ``clean``, else the will's
        ``offline``/``lost`` (published by the device itself just before it disconnects, as
        the transport offers no way to drop a session uncleanly)."""
        if not self.state.online or self.state.stopped:
            return
        self._disconnect("shutdown" if clean else "lost")
        log.info("simulated device offline", extra=log_fields(device=self.id, clean=clean))

    def go_online(self) -> None:
        """Reconnect with a fresh session; idempotent."""
        if self.state.online or self.state.stopped:
            return
        self._connect()
        log.info("simulated device online", extra=log_fields(device=self.id))

    # -- publishing (scheduler thread)

    def _birth(self) -> None:
        if self.state.stopped or not self.state.online:
            return
        self.wire.birth(self.group)
        record = self.state.record
        if record is not None:
            self.wire.model(record.as_dict())

    def _metrics_tick(self) -> None:
        if self.state.stopped:
            return
        if self.connected:
            self.wire.metrics(self._metrics_body())
        self.ctx.sched.soon(self._metrics_tick, self.cfg.interval_s)

    def _metrics_body(self) -> dict[str, Any]:
        cfg, serving = self.cfg, self.state.serving
        fps = round(serving.fps * self.ctx.rng.uniform(0.97, 1.03), 2)
        self.frames += int(fps * cfg.interval_s)
        info = {
            "name": cfg.model,
            "version": serving.version,
            "precision": "int8",
            "engine_hash": engine_hash(self.id, cfg.model, serving.version),
        }
        infer = round(1000.0 / max(fps, 1e-3) * 0.6, 2)
        source = {
            "state": "streaming",
            "fps": fps,
            "latency_ms": {"p50": round(infer * 1.5, 2), "p99": round(infer * 3.0, 2)},
            "drops": 0,
            "frames": self.frames,
        }
        rng = self.ctx.rng
        power = round(7.0 + fps / 15.0 + rng.uniform(-0.3, 0.3), 2)  # an Orin Nano-like board
        used = round(3100.0 + rng.uniform(-40.0, 40.0), 1)
        return {
            "uptime_s": round(time.monotonic() - self.state.started, 1),
            "profile": "orin-nano-8gb",
            "board": "NVIDIA Jetson Orin Nano Developer Kit",
            "sources": {"cam0": source},
            "stages_ms": {"infer": infer},
            "power_w": power,
            "temperatures_c": {
                "cpu": round(48.0 + power + rng.uniform(-1, 1), 1),
                "gpu": round(46.0 + power + rng.uniform(-1, 1), 1),
            },
            "memory": {"used_mib": used, "total_mib": 7620.0, "used_pct": round(used / 76.2, 1)},
            "fps_per_w": round(fps / power, 3),
            "governor": {"state": "normal", "workers": 2, "builds_allowed": True},
            "model": info,
            "models": {cfg.model: info},
            "comms": {"spooled": 0, "dropped": 0, "sent": self.wire.seq},
        }

    # -- incoming (network thread: enqueue only)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.topics.is_ota(topic):
            self.ctx.sched.soon(lambda: handle_ota(self.ctx, payload))
            return
        name = self.topics.command_name(topic)
        if name is not None:
            self.ctx.sched.soon(lambda: handle_command(self.ctx, name, payload))
