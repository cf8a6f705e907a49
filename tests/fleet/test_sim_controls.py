"""What the fleet controller's rollouts need from the simulated devices, against a real
Mosquitto: nan/bad-gate outcomes, retained per-device manifests (cleared, re-delivered,
not-newer once), devices going offline and back, rollback-model, the command line."""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.comms.mqtt import publish_once
from agent.config.broker import MqttConfig
from agent.core.errors import EdgeAgentError
from agent.fleet.sim import (
    NAN_MODE,
    SimConfig,
    SimFleet,
    add_simulate_arguments,
    main,
    run_simulate,
)
from agent.fleet.sim.config import MAX_SESSIONS_PER_PROCESS
from agent.fleet.sim.ota import plan_outcome
from agent.fleet.sim.shards import shard_plan
from tests.fleet.test_simulate import (
    FLEET,
    command,
    latest,
    push,
    responses,
    sim_cfg,
    wait_states,
)
from tests.helpers.broker import Broker, Collector


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    with Collector(broker.url, [f"edge/{FLEET}/#"]) as c:
        yield c


def _ota_events(collector: Collector, device: str, state: str) -> list[dict[str, object]]:
    events = (m.json() for m in collector.on(f"edge/{FLEET}/{device}/events"))
    return [e["data"] for e in events if e["kind"] == "ota.state" and e["data"]["state"] == state]


def test_nan_rate_rolls_back_and_bad_gate_rate_reports_a_task_drop(
    broker: Broker, keys: Path, bundle: Path, collector: Collector
) -> None:
    with SimFleet(sim_cfg(broker, keys, devices=6, nan_rate=1.0)) as fleet:
        assert fleet.wait_connected(10)
        time.sleep(0.3)
        push(broker, keys, bundle, version=2)
        models = wait_states(collector, fleet.ids, lambda r: r["state"] == "rolled_back")
        assert {(r["state"], r["reason"]) for r in models.values()} == {NAN_MODE[1:]}
        assert all(r["transitions"][-2:] == ["probation", "rolled_back"] for r in models.values())
        assert fleet.progress().rolled_back == 6
        assert all(d.serving_version == 1 for d in fleet.devices)
    with SimFleet(sim_cfg(broker, keys, devices=6, prefix="gate", bad_gate_rate=1.0)) as fleet:
        assert fleet.wait_connected(10)
        time.sleep(0.3)
        push(broker, keys, bundle, version=3)
        models = wait_states(collector, fleet.ids, lambda r: r["state"] == "active")
        gates = [models[d]["artifact"]["gate"] for d in fleet.ids]
        assert gates == [{"passed": True, "task_drop": 0.2}] * 6


def test_retained_manifests_offline_online_cleared_and_not_newer_once(
    broker: Broker, keys: Path, bundle: Path, collector: Collector
) -> None:
    mqtt = MqttConfig(enabled=True, url=broker.url)
    with SimFleet(sim_cfg(broker, keys, devices=3, groups=())) as fleet:
        first, second, _ = fleet.ids
        assert fleet.wait_connected(10)
        time.sleep(0.3)
        done = push(broker, keys, bundle, version=2, group=None, device=first, retain=True)
        assert done.topic == f"edge/{FLEET}/{first}/ota"
        record = wait_states(collector, [first], lambda r: r["state"] == "active")[first]

        # a device that drops off (will: offline/lost) gets its retained manifest on return
        fleet.take_offline([second])
        assert collector.wait_for(lambda m: latest(m, "state")[second]["state"] == "offline", 5)
        assert latest(collector.messages, "state")[second]["reason"] == "lost"
        assert not fleet.devices[1].connected and fleet.progress().connected == 2
        push(broker, keys, bundle, version=2, group=None, device=second, retain=True)
        time.sleep(0.3)
        assert second not in latest(collector.messages, "model")
        fleet.bring_online([second])
        assert fleet.wait_connected(10, [second])
        wait_states(collector, [second], lambda r: r["state"] == "active" and r["version"] == 2)
        assert latest(collector.messages, "state")[second]["state"] == "online"

        # the applied manifest re-delivered on reconnect: ignored, the record stands
        fleet.take_offline([first], clean=True)
        assert collector.wait_for(lambda m: latest(m, "state")[first]["reason"] == "shutdown", 5)
        fleet.bring_online([first])
        assert fleet.wait_connected(10, [first])
        # the controller clears the retained manifest: an empty payload, ignored
        publish_once(mqtt, done.topic, b"", retain=True)
        # an older manifest not yet seen: rejected not_newer, once per manifest
        push(broker, keys, bundle, version=1, group=None, device=first, retain=True)
        wait_states(collector, [first], lambda r: r["reason"] == "not_newer")
        fleet.take_offline([first])
        fleet.bring_online([first])
        assert fleet.wait_connected(10, [first])
        time.sleep(0.5)
        assert len(_ota_events(collector, first, "received")) == 2  # v2 once, v1 once
        assert len(_ota_events(collector, first, "rejected")) == 1
        assert fleet.devices[0].serving_version == 2
        assert _ota_events(collector, first, "active")[0]["id"] == record["id"]


def test_rollback_model_returns_to_the_old_version(
    broker: Broker, keys: Path, bundle: Path, collector: Collector
) -> None:
    with SimFleet(sim_cfg(broker, keys, devices=2)) as fleet:
        dev, fresh = fleet.ids
        assert fleet.wait_connected(10)
        time.sleep(0.3)
        push(broker, keys, bundle, version=2)
        wait_states(collector, fleet.ids, lambda r: r["state"] == "active")
        command(broker, dev, "rollback-model", "rb-1")
        command(broker, dev, "rollback-model", "rb-1")  # the same id: answered, not re-run
        assert collector.wait_for(lambda m: len(responses(collector, dev)) >= 2, 5)
        first, again = responses(collector, dev)[:2]
        assert first == {**again, "ts": first["ts"]}
        rolled = first["result"]
        assert rolled["op"] == "rollback" and rolled["state"] == "rolled_back"
        assert rolled["reason"] == "rollback_requested" and rolled["version"] == 2
        assert rolled["previous"]["version"] == 1
        assert len(_ota_events(collector, dev, "rolled_back")) == 1
        assert collector.wait_for(lambda m: latest(m, "metrics")[dev]["model"]["version"] == 1, 5)
        assert latest(collector.messages, "model")[dev]["state"] == "rolled_back"
        assert fleet.progress().rollbacks == 1
        # a second rollback has nowhere to go: failed / no_rollback_target
        command(broker, dev, "rollback-model", "rb-2")
        assert collector.wait_for(lambda m: len(responses(collector, dev)) >= 3, 5)
        assert responses(collector, dev)[2]["result"]["reason"] == "no_rollback_target"
        assert fleet.devices[1].serving_version == 2 and fresh != dev


def test_outcome_draws_follow_the_rates() -> None:
    cfg = SimConfig(
        mqtt_url="mqtt://127.0.0.1:1", trust_dir=Path("/nonexistent"), nan_rate=0.2,
        fail_rate=0.3, slow_rate=0.5, bad_gate_rate=0.1,
    )  # fmt: skip
    rng = random.Random(1)
    outcomes = [plan_outcome(cfg, rng) for _ in range(4000)]
    nan = sum(o.fail == NAN_MODE for o in outcomes) / 4000
    failed = sum(o.fail is not None for o in outcomes) / 4000
    slow = sum(o.fps_factor == 0.5 for o in outcomes) / 4000
    bad = sum(o.task_drop == 0.2 for o in outcomes) / 4000
    # nan_rate, plus fail_rate's share of the nan mode among the six fail modes
    assert 0.21 < nan < 0.29 and 0.45 < failed < 0.55
    assert 0.45 < slow < 0.55 and 0.07 < bad < 0.13


@pytest.mark.parametrize(
    "changes",
    [{"devices": 0}, {"fail_rate": 0.7, "nan_rate": 0.4}, {"slow_rate": 2.0}, {"groups": ("A B",)},
     {"prefix": "Sim"}, {"interval_s": 0}, {"devices": MAX_SESSIONS_PER_PROCESS + 1}],
)  # fmt: skip
def test_config_refuses_bad_values(changes: dict[str, object]) -> None:
    with pytest.raises(EdgeAgentError):
        SimConfig(mqtt_url="mqtt://127.0.0.1:1", trust_dir=Path("/x"), **changes)  # type: ignore[arg-type]


def test_cli_runs_a_small_fleet_and_exits_zero(
    broker: Broker, keys: Path, collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"cli{uuid.uuid4().hex[:4]}"
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = parser.parse_args(
        ["--devices", "3", "--mqtt-url", broker.url, "--trust-dir", str(keys), "--fleet", FLEET,
         "--prefix", prefix, "--group", "cams", "doors", "--interval", "0.2", "--duration", "1.5",
         "--progress", "0.5", "--nan-rate", "0.1", "--bad-gate-rate", "0.1"]
    )  # fmt: skip
    assert run_simulate(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) >= 2 and lines[-1]["final"] is True
    assert lines[-1]["devices"] == 3 and lines[-1]["connected"] == 3
    states = {d: s for d, s in latest(collector.messages, "state").items() if d.startswith(prefix)}
    assert len(states) == 3 and {s["reason"] for s in states.values()} == {"shutdown"}
    births = [m.json() for m in collector.messages if m.topic.endswith("/state")]
    assert {b["group"] for b in births if b["state"] == "online"} == {"cams", "doors"}
    assert len([d for d in latest(collector.messages, "metrics") if d.startswith(prefix)]) == 3
    assert main(["--devices", "1", "--mqtt-url", broker.url, "--trust-dir", str(keys / "no")]) == 2
    with pytest.raises(SystemExit):
        main(["--mqtt-url", broker.url, "--trust-dir", str(keys), "--fail-rate", "1.5"])


def test_cli_splits_a_larger_fleet_into_processes(
    broker: Broker, keys: Path, collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shard_plan(1000, 300) == [(0, 250), (250, 250), (500, 250), (750, 250)]
    assert shard_plan(7, 3) == [(0, 3), (3, 2), (5, 2)]
    argv = ["--devices", "7", "--per-process", "3", "--mqtt-url", broker.url, "--trust-dir",
            str(keys), "--fleet", FLEET, "--prefix", "shard", "--group", "cams", "doors",
            "--interval", "0.3", "--progress", "0.5", "--duration", "8", "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert final["final"] is True and final["devices"] == 7 and final["connected"] == 7
    births = {
        m.json()["device"]: m.json()
        for m in collector.messages
        if m.topic.endswith("/state") and m.json()["state"] == "online"
    }
    assert sorted(births) == [f"shard-{i:04d}" for i in range(7)]
    assert [births[f"shard-{i:04d}"]["group"] for i in range(7)] == ["cams", "doors"] * 3 + ["cams"]
    states = latest(collector.messages, "state")
    assert {states[d]["reason"] for d in births} == {"shutdown"}
