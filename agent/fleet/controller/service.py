"""The fleet controller (``edge-agent fleet serve``): registry, rollouts, API, bundle server.

:class:`FleetController` composes, in ``start()`` order: the store (:func:`open_store`), the
bundle download server (:class:`RolloutFileServer`), the registry intake (a bounded queue fed
by one :class:`MqttClient` subscribed to the devices' ``state|metrics|events|model`` topics),
the rollout driver on a tick thread (every ``tick_s``, only while the broker link is up), and
the live stream's change feed (:class:`ChangeFeed`: the intake and the driver mark what they
changed), and the HTTP API (:class:`ApiServer`), whose backend it is (reads through
:class:`FleetReads`). Applied device messages also feed the device history
(:class:`HistoryRecorder`). ``stop()`` undoes it in reverse order.
A controller stopped mid-rollout and started again (same store) picks its rollouts up where the
store has them.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.comms.mqtt import MqttClient
from agent.config.fleet import FleetConfig
from agent.core.errors import EdgeAgentError
from agent.core.logs import log_fields
from agent.fleet.controller.api import ApiError, ApiServer
from agent.fleet.controller.auth import load_token
from agent.fleet.controller.driver import RolloutDriver
from agent.fleet.controller.executor import ActionExecutor
from agent.fleet.controller.files import RolloutFileServer, rollout_dir
from agent.fleet.controller.intake import MessageIntake
from agent.fleet.controller.reads import BUSY_STATES, FleetReads
from agent.fleet.controller.stream import ChangeFeed, StreamClient
from agent.fleet.controller.views import parse_start
from agent.fleet.history.recorder import HistoryRecorder
from agent.fleet.registry.ingest import RegistryIngest, registry_subscriptions
from agent.fleet.rollout.records import Rollout
from agent.fleet.rollout.sign import new_rollout_id, prepare_rollout
from agent.fleet.store.base import FleetStore
from agent.fleet.store.open import open_store

__all__ = ["FleetController", "default_instance_id"]

log = logging.getLogger(__name__)

_BUSY = BUSY_STATES


def default_instance_id() -> str:
    """Host name (as a lower-case name) + a random suffix."""
    host = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().lower()).strip("-._") or "fleet"
    return f"{host[:40]}-{secrets.token_hex(3)}"


class FleetController:
    """One controller instance. ``start()`` / ``stop()``; also the API's backend."""

    def __init__(
        self, cfg: FleetConfig, base_dir: Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self.clock = clock
        self.instance_id = cfg.instance_id or default_instance_id()
        self.state_dir = cfg.state_dir if cfg.state_dir.is_absolute() else base_dir / cfg.state_dir
        self._store: FleetStore | None = None
        self._files: RolloutFileServer | None = None
        self._intake: MessageIntake | None = None
        self._ingest: RegistryIngest | None = None
        self._mqtt: MqttClient | None = None
        self._driver: RolloutDriver | None = None
        self._api: ApiServer | None = None
        self._reads: FleetReads | None = None
        self._feed: ChangeFeed | None = None
        self._recorder: HistoryRecorder | None = None
        self._ticker: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._start_lock = threading.Lock()

    # -- lifecycle

    def start(self) -> FleetController:
        api = self.cfg.api
        if api.token_file is not None and not api.token_file.is_absolute():
            api = api.model_copy(update={"token_file": self.base_dir / api.token_file})
        token = load_token(api)  # a bad token source fails before anything opens
        try:
            self._start(token)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, token: str | None) -> None:
        cfg = self.cfg
        self._store = store = open_store(cfg.store, base_dir=self.base_dir)
        self._files = RolloutFileServer(cfg.bundle_server, self.state_dir, self._known)
        self._files.start()
        self._recorder = recorder = HistoryRecorder(store.history, cfg.fleet, cfg.history)
        self._ingest = RegistryIngest(
            store.registry, cfg.fleet, clock=self.clock, observer=recorder
        )
        self._reads = reads = FleetReads(
            cfg, store, self.clock, ingest_counts=self._ingest.counts, dropped=self._dropped
        )
        self._feed = feed = ChangeFeed(reads, cfg.stream.max_clients)
        feed.start()
        self._intake = MessageIntake(self._ingest.handle, on_applied=feed.device_changed)
        self._intake.start()
        self._mqtt = MqttClient(
            cfg.mqtt,
            client_id=self.instance_id,
            subscriptions=registry_subscriptions(cfg.fleet, cfg.share_group),
            on_message=self._intake.offer,
        )
        self._mqtt.start()
        executor = ActionExecutor(self._mqtt, cfg.fleet, self.instance_id, store.rollouts.manifest)
        self._driver = RolloutDriver(
            store,
            cfg.fleet,
            self.instance_id,
            executor,
            lease_s=3 * cfg.tick_s + 5,
            tick_s=cfg.tick_s,
            clock=self.clock,
            on_change=feed.rollout_changed,
        )
        self._ticker = threading.Thread(target=self._tick_loop, name="fleet-tick", daemon=True)
        self._ticker.start()
        self._api = ApiServer(cfg.api, self, token)
        self._api.start()
        log.info(
            "fleet controller started",
            extra=log_fields(
                fleet=cfg.fleet,
                instance=self.instance_id,
                store=store.where,
                api=self._api.url,
                bundles=self._files.root_url,
            ),
        )

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._feed is not None:
            self._feed.stop()  # ends the live streams, so the API can stop
        if self._api is not None:
            self._api.stop()
        if self._ticker is not None:
            self._ticker.join(30)
            self._ticker = None
        if self._mqtt is not None:
            self._mqtt.close()
        if self._intake is not None:
            self._intake.stop()
        if self._recorder is not None:
            self._recorder.flush()
        if self._files is not None:
            self._files.stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def api_url(self) -> str:
        return "" if self._api is None else self._api.url

    @property
    def store(self) -> FleetStore:
        if self._store is None:
            raise EdgeAgentError("the fleet controller is not running", fix="start() it first")
        return self._store

    @property
    def mqtt_connected(self) -> bool:
        return self._mqtt is not None and self._mqtt.connected

    def wait_connected(self, timeout_s: float) -> bool:
        return self._mqtt is not None and self._mqtt.wait_connected(timeout_s)

    @property
    def reads(self) -> FleetReads:
        if self._reads is None:
            raise EdgeAgentError("the fleet controller is not running", fix="start() it first")
        return self._reads

    def _dropped(self) -> int:
        return 0 if self._intake is None else self._intake.stats()["dropped"]

    def _known(self, rollout_id: str) -> bool:
        store = self._store
        return store is not None and store.rollouts.get(rollout_id) is not None

    def _tick_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.cfg.tick_s)
            self._wake.clear()
            if self._stopping.is_set() or self._driver is None:
                return
            if self._recorder is not None:
                self._recorder.flush()  # the history's points taken since the last tick
            if not self.mqtt_connected:
                continue  # no publishing, and the registry is not being fed
            try:
                self._driver.tick_all()
            except Exception:
                log.exception("rollout tick failed", extra=log_fields(fleet=self.cfg.fleet))

    # -- API backend

    def health(self) -> dict[str, Any]:
        store = self.store
        intake = {} if self._intake is None else self._intake.stats()
        ingest = {} if self._ingest is None else self._ingest.counts()
        active = store.rollouts.list(self.cfg.fleet, states=_BUSY)
        return {
            "ok": self.mqtt_connected,
            "version": __version__,
            "fleet": self.cfg.fleet,
            "instance": self.instance_id,
            "store": store.where,
            "mqtt": {"connected": self.mqtt_connected},
            "ingest": {**intake, "messages": ingest},
            "bundle_url": "" if self._files is None else self._files.root_url,
            "rollouts_active": [str(d["id"]) for d in active],
            "ticks": 0 if self._driver is None else self._driver.ticks,
        }

    def devices(self) -> list[dict[str, Any]]:
        return self.reads.devices()

    def device(self, device_id: str) -> dict[str, Any]:
        return self.reads.device(device_id)

    def summary(self) -> dict[str, Any]:
        return self.reads.summary()

    def history(self, device_id: str, seconds: int) -> dict[str, Any]:
        return self.reads.history(device_id, seconds)

    def events(self, device_id: str, limit: int) -> dict[str, Any]:
        return self.reads.events(device_id, limit)

    def ota(self, device_id: str) -> dict[str, Any]:
        return self.reads.ota(device_id)

    def metrics_text(self) -> bytes:
        return self.reads.metrics_text()

    def stream_subscribe(self) -> StreamClient | None:
        return None if self._feed is None else self._feed.subscribe()

    def stream_unsubscribe(self, client: StreamClient) -> None:
        if self._feed is not None:
            self._feed.unsubscribe(client)

    def rollouts(self) -> list[dict[str, Any]]:
        docs = self.store.rollouts.list(self.cfg.fleet)
        return [Rollout.from_json(d).status_json() for d in docs]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        status = self.reads.rollout_doc(rollout_id)
        if status is None:
            raise _no_rollout(rollout_id)
        return status

    def control(self, rollout_id: str, op: str) -> dict[str, Any]:
        if self._driver is None:
            raise ApiError(503, "unavailable", "the controller is stopping", "retry later")
        self.rollout(rollout_id)  # 404 for another fleet's rollout
        rollout = self._driver.control(rollout_id, op)
        if rollout is None:
            raise _no_rollout(rollout_id)
        self._wake.set()
        return rollout.status_json()

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        request = parse_start(body, self.cfg.rollouts)
        with self._start_lock:
            busy = self.store.rollouts.list(self.cfg.fleet, states=_BUSY)
            if busy:
                raise ApiError(
                    409,
                    "conflict",
                    f"rollout {busy[0]['id']} of fleet {self.cfg.fleet} is still "
                    f"{busy[0]['state']}",
                    "wait until it completes, or abort it (`edge-agent fleet rollout abort ID`)",
                )
            rollout = self._prepare_and_store(request.spec, request.key_path)
        if self._feed is not None:
            self._feed.rollout_changed(rollout.id)
        self._wake.set()
        return rollout.status_json()

    def _prepare_and_store(self, spec: Any, key_path: Path) -> Rollout:
        assert self._files is not None
        rollout_id = new_rollout_id()
        directory = rollout_dir(self.state_dir, rollout_id)
        try:
            directory.mkdir(parents=True)
            prepared = prepare_rollout(
                spec,
                fleet=self.cfg.fleet,
                key_path=key_path,
                devices=self.store.registry.devices(self.cfg.fleet),
                rollout_dir=directory,
                base_url=self._files.base_url(rollout_id),
                rollout_id=rollout_id,
                now=self.clock(),
            )
            self.store.rollouts.create(rollout_id, prepared.rollout.to_json(), prepared.manifests)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        log.info("rollout started", extra=log_fields(rollout=rollout_id, fleet=self.cfg.fleet))
        return prepared.rollout


def _no_rollout(rollout_id: str) -> ApiError:
    return ApiError(
        404,
        "not_found",
        f"no rollout {rollout_id!r}",
        "list the rollouts with GET /api/rollouts (`edge-agent fleet rollout list`)",
    )
