"""The fleet controller end to end: SQLite store, a real Mosquitto, 20 simulated devices that
verify the signed per-device manifests with the real trust store. A small rollout completes;
pause holds publishing; a controller stopped mid-rollout and started again finishes it."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.fleet.keygen import generate_keypair
from agent.fleet.sim import SimConfig, SimFleet
from tests.helpers.broker import Broker, Collector
from tests.helpers.fleet_controller import fleet_config, request, running, wait_for, write_token
from tests.helpers.ota_support import copy_bundle

FLEET = "ctlf"
DEVICES = 20


@pytest.fixture
def setup(broker: Broker, tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = tmp_path / "keys"
    generate_keypair(keys, "ops")
    token_file, token = write_token(tmp_path / "secrets")
    sim = SimConfig(
        mqtt_url=broker.url, trust_dir=keys, devices=DEVICES, fleet=FLEET, prefix="cam",
        interval_s=0.3, step_s=0.02, seed=3,
    )  # fmt: skip
    with SimFleet(sim) as devices:
        assert devices.wait_connected(15)
        yield {
            "cfg": fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=token_file),
            "token": token,
            "key": keys / "ops.key",
            "bundle": copy_bundle(tmp_path / "bundle"),
            "sim": devices,
            "base": tmp_path,
        }


def _spec(setup: dict[str, Any], **changes: Any) -> bytes:
    spec: dict[str, Any] = {
        "bundle": str(setup["bundle"]), "version": 2, "canary": "2", "waves": ["50%", "100%"],
        "rate_per_min": 600, "soak_s": 1,
    }  # fmt: skip
    spec.update(changes)
    return json.dumps({"spec": spec, "key_path": str(setup["key"])}).encode()


def _registry_full(url: str) -> bool:
    devices = request(url, "GET", "/api/devices")[1]["devices"]
    return len(devices) == DEVICES and all(d["online"] and d["metrics"] for d in devices)


def _status(url: str, rollout_id: str) -> dict[str, Any]:
    status, doc, _ = request(url, "GET", f"/api/rollouts/{rollout_id}")
    assert status == 200, doc
    return doc


def _start(url: str, setup: dict[str, Any], **changes: Any) -> dict[str, Any]:
    wait_for(lambda: _registry_full(url), 15, "20 devices in the registry")
    status, doc, _ = request(
        url, "POST", "/api/rollouts", body=_spec(setup, **changes), token=setup["token"]
    )
    assert status == 201, doc
    return doc


def _published(status: dict[str, Any]) -> int:
    return sum(1 for d in status["devices"].values() if d["published_at"] is not None)


def test_a_small_rollout_completes(setup: dict[str, Any], broker: Broker) -> None:
    with running(setup["cfg"], setup["base"]) as ctl:
        url = ctl.api_url
        started = _start(url, setup)
        assert started["state"] == "planned" and started["version"] == 2
        assert [len(w["devices"]) for w in started["waves"]] == [2, 8, 10]
        assert started["waves"][0]["devices"] == ["cam-0000", "cam-0001"]
        done = wait_for(
            lambda: (s := _status(url, started["id"]))["state"] == "completed" and s, 45,
            "the rollout to complete",
        )  # fmt: skip
        assert done["counts"] == {
            "pending": 0, "in_progress": 0, "active": DEVICES, "failed": 0, "rolled_back": 0,
            "offline": 0,
        }  # fmt: skip
        assert [w["state"] for w in done["waves"]] == ["done"] * 3
        assert done["abort_reason"] is None and done["tripped"] == []
        assert set(done["devices"]) == set(setup["sim"].ids)
        assert all(d["state"] == "active" for d in done["devices"].values())
        for key in ("id", "fleet", "model", "created_at", "updated_at", "spec", "waves"):
            assert key in done
        # later waves started only after the earlier ones were done
        waves = done["waves"]
        for before, after in itertools.pairwise(waves):
            assert before["done_at"] <= after["started_at"]
        # the registry shows the new version, and no manifest stays retained
        wait_for(
            lambda: all(
                (d["model"] or {}).get("version") == 2
                for d in request(url, "GET", "/api/devices")[1]["devices"]
            ),
            10,
            "metrics on v2",
        )
        listed = request(url, "GET", "/api/rollouts")[1]["rollouts"]
        assert [r["id"] for r in listed] == [done["id"]]
    with Collector(broker.url, [f"edge/{FLEET}/+/ota"]) as retained:
        time.sleep(0.5)
        assert [m.topic for m in retained.messages if m.retain and m.payload] == []


def test_pause_holds_publishing_and_resume_finishes(setup: dict[str, Any]) -> None:
    with running(setup["cfg"], setup["base"]) as ctl:
        url, token = ctl.api_url, setup["token"]
        rid = _start(url, setup, rate_per_min=60, soak_s=0)["id"]
        wait_for(lambda: _published(_status(url, rid)) >= 1, 10, "a first publish")
        status, paused, _ = request(url, "POST", f"/api/rollouts/{rid}/pause", token=token)
        assert status == 200 and paused["state"] == "paused"
        held = _published(_status(url, rid))
        time.sleep(2.0)  # several ticks and rate tokens: nothing new goes out
        after = _status(url, rid)
        assert after["state"] == "paused" and _published(after) == held < DEVICES
        # pausing twice changes nothing; resuming a paused rollout runs it again
        assert request(url, "POST", f"/api/rollouts/{rid}/pause", token=token)[0] == 200
        status, resumed, _ = request(url, "POST", f"/api/rollouts/{rid}/resume", token=token)
        assert status == 200 and resumed["state"] == "running"
        status, doc, _ = request(url, "POST", "/api/rollouts", body=_spec(setup), token=token)
        assert status == 409 and doc["error"]["code"] == "conflict"
        request(url, "POST", f"/api/rollouts/{rid}/pause", token=token)
        request(url, "POST", f"/api/rollouts/{rid}/resume", token=token)
        status, doc, _ = request(url, "POST", f"/api/rollouts/{rid}/abort", token=token)
        assert status == 200 and doc["state"] == "aborted"
        assert doc["abort_reason"] == "aborted by operator"
        status, doc, _ = request(url, "POST", f"/api/rollouts/{rid}/resume", token=token)
        assert status == 400 and doc["error"]["fix"]


def test_a_restarted_controller_finishes_the_rollout(setup: dict[str, Any]) -> None:
    with running(setup["cfg"], setup["base"]) as ctl:
        rid = _start(ctl.api_url, setup, rate_per_min=300)["id"]
        wait_for(
            lambda: (
                (s := _status(ctl.api_url, rid))["waves"][1]["started_at"] is not None
                and _published(s) < DEVICES
            ),
            30,
            "the second wave to start",
        )
    # stopped mid-rollout; the devices keep going; a new process on the same store resumes
    with running(setup["cfg"], setup["base"]) as again:
        before = _status(again.api_url, rid)
        assert before["state"] == "running" and _published(before) < DEVICES
        done = wait_for(
            lambda: (s := _status(again.api_url, rid))["state"] == "completed" and s, 45,
            "the resumed rollout to complete",
        )  # fmt: skip
        assert done["counts"]["active"] == DEVICES
