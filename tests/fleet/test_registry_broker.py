"""The registry fed through a real Mosquitto: a device publishes birth, metrics and its OTA record
(retained, as the daemon does); a subscriber on :class:`agent.comms.mqtt.MqttClient` enqueues on
paho's thread and a consumer thread feeds :class:`RegistryIngest`."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from agent.comms.mqtt import MqttClient
from agent.config.broker import MqttConfig
from agent.fleet.registry.ingest import RegistryIngest, registry_subscriptions
from agent.fleet.registry.store import SqliteRegistryStore
from agent.ota.states import UpdateState
from tests.helpers.broker import Broker
from tests.helpers.fleet_messages import FLEET, Device, ota_record
from tests.helpers.ota_e2e_util import wait_until


def test_registry_from_a_real_broker(broker: Broker, tmp_path: Path) -> None:
    cfg = MqttConfig(enabled=True, url=broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    cam = Device("cam-07")
    device = MqttClient(cfg, client_id="cam-07")
    device.start()
    assert device.wait_connected(10)
    # retained before the controller subscribes: it must still learn them
    for topic, payload in (cam.birth(), cam.model(ota_record(UpdateState.PROBATION))):
        assert device.publish_wait(topic, payload, retain=True, timeout_s=10)

    store = SqliteRegistryStore(tmp_path / "fleet.db")
    ingest = RegistryIngest(store, FLEET)
    inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=1000)

    def consume() -> None:
        while (item := inbox.get()) is not None:
            ingest.handle(*item)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    controller = MqttClient(
        cfg,
        client_id="fleet-ctl",
        subscriptions=registry_subscriptions(FLEET),
        on_message=lambda topic, payload: inbox.put_nowait((topic, payload)),
    )
    controller.start()
    try:
        assert controller.wait_connected(10)
        wait_until(
            lambda: (r := store.get(FLEET, "cam-07")) is not None and r.ota is not None,
            10,
            "retained",
        )
        for _ in range(3):
            assert device.publish_wait(*cam.metrics(fps=12.5), timeout_s=10)
        assert device.publish_wait("edge/prod/cam-07/metrics", b"{broken", timeout_s=10)
        active = ota_record(UpdateState.ACTIVE, updated_at=1_760_000_040)
        assert device.publish_wait(*cam.model(active), retain=True, timeout_s=10)

        def settled() -> bool:
            rec = store.get(FLEET, "cam-07")
            return (
                rec is not None
                and rec.ota is not None
                and rec.ota.state == "active"
                and (ingest.counts().get("rejected", 0) == 1)
            )

        wait_until(settled, 10, f"the active record, counts {ingest.counts()}")
        rec = store.get(FLEET, "cam-07")
        assert rec is not None and rec.online and rec.metrics_seq == 3
        assert rec.metrics is not None and rec.metrics.fps == 12.5
        assert rec.model is not None and rec.model.version == 3
        assert ingest.counts() == {"applied": 6, "rejected": 1, "rejected.not_json": 1}
    finally:
        controller.close()
        device.close()
        inbox.put(None)
        consumer.join(5)
        store.close()
