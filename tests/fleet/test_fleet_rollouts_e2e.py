"""Rollouts end to end over simulated devices (real Mosquitto, real signatures, real stores):

* 30 % of the devices roll the new model back: the rollout aborts in its canary wave, no later
  wave is published, and every device that took the new version ends on the old one;
* a device offline during the push gets the update when it returns;
* ``edge-agent fleet serve`` SIGKILLed mid-rollout and started again resumes where it was;
* the same rollout on PostgreSQL, with two controller instances sharing the devices' messages
  through an MQTT 5 shared subscription.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config.fleet import FleetConfig
from agent.fleet.client import FleetApiError, FleetClient
from agent.fleet.keygen import generate_keypair
from agent.fleet.sim import SimConfig, SimFleet
from agent.fleet.sim.config import FailMode
from agent.fleet.store.postgres import PostgresFleetStore
from tests.assets import REPO
from tests.helpers.broker import Broker, Collector, free_port
from tests.helpers.fleet_controller import fleet_config, running, wait_for, write_token
from tests.helpers.ota_support import copy_bundle
from tests.helpers.postgres import PostgresServer

pytestmark = pytest.mark.timeout(240)

FLEET = "e2e"
ROLLED_BACK: tuple[FailMode, ...] = (("probation", "rolled_back", "probation_slow"),)


class World:
    """Keys, a bundle, an API token and a simulated fleet on the test broker."""

    def __init__(self, broker: Broker, base: Path) -> None:
        self.broker, self.base = broker, base
        generate_keypair(base / "keys", "ops")
        self.key = base / "keys" / "ops.key"
        self.token_file, self.token = write_token(base / "secrets")
        self.bundle = copy_bundle(base / "bundle")

    def sims(self, devices: int, **changes: Any) -> SimConfig:
        fields: dict[str, Any] = {
            "mqtt_url": self.broker.url, "trust_dir": self.base / "keys", "devices": devices,
            "fleet": FLEET, "prefix": "cam", "interval_s": 0.5, "step_s": 0.02, "seed": 11,
        }  # fmt: skip
        fields.update(changes)
        return SimConfig(**fields)

    def spec(self, **changes: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "bundle": str(self.bundle), "version": 2, "target": "all", "canary": "10%",
            "waves": ["50%", "100%"], "rate_per_min": 1200, "soak_s": 1, "max_failed_pct": 10,
        }  # fmt: skip
        spec.update(changes)
        return spec


@pytest.fixture
def world(broker: Broker, tmp_path: Path) -> World:
    return World(broker, tmp_path)


def _registered(api: FleetClient, count: int) -> bool:
    devices = api.devices()
    return len(devices) >= count and all(d["metrics"] for d in devices)


def _ended(api: FleetClient, rollout_id: str, *states: str) -> dict[str, Any] | None:
    status = api.rollout(rollout_id)
    return status if status["state"] in states else None


def _retained_manifests(broker: Broker) -> list[str]:
    """The ota topics that hold a retained (non-empty) manifest now."""
    with Collector(broker.url, [f"edge/{FLEET}/+/ota"]) as col:
        time.sleep(0.5)  # retained messages arrive right after the subscription
        return sorted(m.topic for m in col.messages if m.retain and m.payload)


def test_rollbacks_in_the_canary_abort_and_every_taker_returns(world: World) -> None:
    cfg = world.sims(100, fail_rate=0.3, fail_modes=ROLLED_BACK)
    ctl_cfg = fleet_config(world.base, world.broker.url, fleet=FLEET, token_file=world.token_file)
    with SimFleet(cfg) as sims, running(ctl_cfg, world.base) as ctl:
        assert sims.wait_connected(30)
        api = FleetClient(ctl.api_url, world.token)
        wait_for(lambda: _registered(api, 100), 30, "100 devices in the registry")
        rid = api.start_rollout(world.spec(), world.key)["id"]
        status = wait_for(lambda: _ended(api, rid, "aborted", "completed"), 60, "the abort")
        assert status["state"] == "aborted", status["counts"]
        assert "failed" in status["abort_reason"] or "rolled back" in status["abort_reason"]
        assert status["tripped"], status
        canary = set(status["waves"][0]["devices"])
        assert len(canary) == 10
        # nothing beyond the canary was ever published
        published = {d for d, p in status["devices"].items() if p["published_at"] is not None}
        assert published <= canary
        assert all(w["started_at"] is None for w in status["waves"][1:])
        # every device that took v2 was told to roll back and serves v1 again
        wait_for(
            lambda: all(sims.device(d).serving_version == 1 for d in sims.ids),
            30,
            "every device back on v1",
        )
        back = wait_for(
            lambda: (s := api.rollout(rid))["counts"]["active"] == 0 and s, 30, "no device active"
        )
        assert back["counts"]["rolled_back"] + back["counts"]["failed"] >= 1
        rolled = [d for d in sims.ids if (sims.device(d).record or {}).get("op") == "rollback"]
        assert rolled, "no device needed the rollback command: the canary had no survivor"
        assert set(rolled) <= canary
    assert _retained_manifests(world.broker) == []


def test_a_device_offline_during_the_push_gets_it_when_it_returns(world: World) -> None:
    ctl_cfg = fleet_config(
        world.base, world.broker.url, fleet=FLEET, token_file=world.token_file,
        rollouts={"offline_after_s": 2, "probation_timeout_s": 60},
    )  # fmt: skip
    with SimFleet(world.sims(6)) as sims, running(ctl_cfg, world.base) as ctl:
        assert sims.wait_connected(20)
        api = FleetClient(ctl.api_url, world.token)
        wait_for(lambda: _registered(api, 6), 20, "6 devices in the registry")
        sims.take_offline(["cam-0004"])
        wait_for(
            lambda: not next(d for d in api.devices() if d["device"] == "cam-0004")["online"],
            10,
            "cam-0004 offline in the registry",
        )
        rid = api.start_rollout(world.spec(canary="1"), world.key)["id"]
        done = wait_for(lambda: _ended(api, rid, "completed", "aborted"), 60, "the rollout")
        assert done["state"] == "completed", done
        assert done["devices"]["cam-0004"]["state"] == "offline"
        assert done["counts"]["active"] == 5 and done["counts"]["offline"] == 1
        assert sims.device("cam-0004").serving_version == 1
        # its manifest stayed retained; it takes it on return and the rollout follows it
        assert _retained_manifests(world.broker) == [f"edge/{FLEET}/cam-0004/ota"]
        sims.bring_online(["cam-0004"])
        wait_for(lambda: sims.device("cam-0004").serving_version == 2, 45, "cam-0004 on v2")
        after = wait_for(
            lambda: (s := api.rollout(rid))["devices"]["cam-0004"]["state"] == "active" and s,
            45,  # the completed rollout is still ticked for its offline device
            "the controller to see cam-0004 active",
        )
        assert after["counts"]["active"] == 6
        wait_for(lambda: _retained_manifests(world.broker) == [], 10, "the manifest cleared")


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``edge-agent fleet serve`` in its own process (output to ``log``), once its API is up."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "fleet", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )  # fmt: skip
    try:
        wait_for(
            lambda: proc.poll() is not None or "api:" in log.read_text(errors="replace"),
            30,
            "fleet serve to start",
        )
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    return proc


def test_a_killed_controller_resumes_where_it_was(world: World) -> None:
    cfg = fleet_config(world.base, world.broker.url, fleet=FLEET, token_file=world.token_file)
    doc = cfg.model_dump(mode="json", exclude_none=True)
    doc["api"]["port"] = free_port()
    config = world.base / "fleet.yaml"
    config.write_text(json.dumps(doc))  # JSON is YAML
    api = FleetClient(f"http://127.0.0.1:{doc['api']['port']}", world.token)
    with SimFleet(world.sims(30)) as sims:
        assert sims.wait_connected(20)
        first = _serve(config, world.base / "serve-1.log")
        try:
            wait_for(lambda: _registered(api, 30), 30, "30 devices in the registry")
            rid = api.start_rollout(world.spec(rate_per_min=120, soak_s=0.5), world.key)["id"]
            wait_for(
                lambda: (
                    (s := api.rollout(rid))["waves"][1]["started_at"] is not None
                    and s["counts"]["pending"] > 0
                ),
                60,
                "the second wave under way",
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        with pytest.raises(FleetApiError):  # the API died with it
            api.rollout(rid)
        second = _serve(config, world.base / "serve-2.log")
        try:
            before = api.rollout(rid)
            assert before["state"] == "running" and before["counts"]["pending"] > 0
            done = wait_for(lambda: _ended(api, rid, "completed", "aborted"), 90, "completion")
            assert done["state"] == "completed" and done["counts"]["active"] == 30
            # each device installed v2 exactly once: no manifest was applied twice
            assert all(sims.device(d).serving_version == 2 for d in sims.ids)
            updates = [(sims.device(d).record or {}).get("op") for d in sims.ids]
            assert updates == ["update"] * 30
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, (world.base / "serve-2.log").read_text()[-3000:]


def _shared_config(world: World, name: str) -> FleetConfig:
    return fleet_config(
        world.base / name, world.broker.url, fleet=FLEET, token_file=world.token_file,
        store={"kind": "postgres", "dsn_env": "EDGE_AGENT_TEST_FLEET_DSN"},
        share_group="ctl", instance_id=name,
    )  # fmt: skip


def test_postgres_store_with_two_instances_sharing_the_devices(
    world: World, postgres_server: PostgresServer
) -> None:
    dsn = postgres_server.create_database()
    os.environ["EDGE_AGENT_TEST_FLEET_DSN"] = dsn
    try:
        configs = [_shared_config(world, name) for name in ("ctl-a", "ctl-b")]
        with (
            SimFleet(world.sims(40, interval_s=0.3)) as sims,
            running(configs[0], world.base / "ctl-a") as a,
            running(configs[1], world.base / "ctl-b") as b,
        ):
            assert sims.wait_connected(20)
            api_a, api_b = FleetClient(a.api_url, world.token), FleetClient(b.api_url, world.token)
            wait_for(lambda: _registered(api_b, 40), 30, "40 devices in the shared registry")
            # the broker split the devices' messages between the two instances
            wait_for(
                lambda: (
                    min(
                        api_a.get("/api/health")["ingest"]["taken"],
                        api_b.get("/api/health")["ingest"]["taken"],
                    )
                    > 20
                ),
                20,
                "both instances ingesting",
            )
            rid = api_a.start_rollout(world.spec(), world.key)["id"]
            done = wait_for(lambda: _ended(api_b, rid, "completed", "aborted"), 90, "completion")
            assert done["state"] == "completed" and done["counts"]["active"] == 40
            assert all(sims.device(d).serving_version == 2 for d in sims.ids)
        store = PostgresFleetStore(dsn)  # the state outlives both instances
        try:
            assert len(store.registry.devices(FLEET)) == 40
            assert (store.rollouts.get(rid) or {}).get("state") == "completed"
        finally:
            store.close()
    finally:
        os.environ.pop("EDGE_AGENT_TEST_FLEET_DSN", None)
