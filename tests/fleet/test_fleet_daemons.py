"""The fleet controller over real devices (:mod:`tests.helpers.fleet_daemons`): three real
daemons and 200 simulated devices on one Mosquitto.

* A rollout whose canary is the three daemons and whose later waves are the simulated devices
  completes: every device serves the new version.
* A model that serves a tenth of the frames goes active on the canary daemon (its own probation
  is relaxed here); the controller's ``--min-fps-ratio`` aborts the rollout before the other
  daemons are published, and the canary is rolled back to the version it served before.
* A daemon SIGKILLed goes offline (last will) and, restarted, serves the same version again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.fleet.client import FleetClient
from agent.fleet.sim import SimConfig, SimFleet
from tests.helpers.broker import mosquitto_binary
from tests.helpers.fleet_controller import fleet_config, running, wait_for, write_token
from tests.helpers.fleet_daemons import FleetDaemons, open_fleet, slow_v2_bundle
from tests.helpers.ota_e2e_util import perturbed_bundle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.scale,
    pytest.mark.timeout(420),
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]

#: simulated devices beside the three daemons
SIMS = 200


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetDaemons]:
    with open_fleet(tmp_path_factory.mktemp("fleet-daemons")) as f:
        yield f


def test_daemons_start_distinct_and_serving_v1(fleet: FleetDaemons) -> None:
    assert fleet.ids == ["cam-1", "cam-2", "cam-3"]
    for i, name in enumerate(fleet.ids):
        m = fleet.metrics(i)
        assert m is not None and m["device"] == name, m
        assert fleet.model_version(i) == 1
        fps = fleet.fps(i)
        assert fps is not None and fps > 0, m
        assert fleet.online(i)


@pytest.fixture(scope="module")
def controller(
    fleet: FleetDaemons, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FleetClient, SimFleet]]:
    """The fleet controller (SQLite) on the daemons' broker, and 200 simulated devices of
    another group beside the three daemons."""
    base = tmp_path_factory.mktemp("fleet-controller")
    token_file, token = write_token(base / "secrets")
    cfg = fleet_config(base, fleet.url, fleet=fleet.fleet, token_file=token_file, tick_s=0.5)
    sims = SimConfig(
        mqtt_url=fleet.url, trust_dir=fleet.env.trust, devices=SIMS, fleet=fleet.fleet,
        prefix="sim", groups=("sims",), interval_s=2.0, step_s=0.05, fps=15.0, seed=5,
    )  # fmt: skip
    with SimFleet(sims) as devices, running(cfg, base) as ctl:
        assert devices.wait_connected(60)
        api = FleetClient(ctl.api_url, token)
        wait_for(
            lambda: sum(1 for d in api.devices() if d["online"] and d["metrics"]) == SIMS + 3,
            60,
            f"{SIMS + 3} devices in the registry",
            step=0.5,
        )
        yield api, devices


def _rollout(api: FleetClient, fleet: FleetDaemons, bundle: Path, **spec: Any) -> str:
    body = {"bundle": str(bundle), "rate_per_min": 600, "max_failed_pct": 10, **spec}
    return api.start_rollout(body, fleet.env.key)["id"]


def _ended(api: FleetClient, rollout_id: str) -> dict[str, Any] | None:
    status = api.rollout(rollout_id)
    return status if status["state"] in ("completed", "aborted") else None


def test_rollout_over_three_daemons_and_200_simulated_devices_completes(
    fleet: FleetDaemons, controller: tuple[FleetClient, SimFleet]
) -> None:
    api, sims = controller
    version = max(fleet.model_version(i) or 1 for i in range(3)) + 1
    bundle = perturbed_bundle(fleet.env.root / f"v{version}", version=version, salt=version)
    # the daemons sort first: the canary is the three real devices
    rid = _rollout(
        api, fleet, bundle, version=version, target="all", canary="3", waves=["50%", "100%"],
        soak_s=1, min_fps_ratio=0.5,
    )  # fmt: skip
    status = wait_for(lambda: _ended(api, rid), 240, "the rollout to end", step=1.0)
    assert status["state"] == "completed", (status["abort_reason"], status["counts"])
    assert status["waves"][0]["devices"] == fleet.ids
    assert status["counts"]["active"] == SIMS + 3, status["counts"]
    since = time.time()
    for i in range(3):
        fleet.wait_version(i, version, 30, since=since)
    assert all(sims.device(d).serving_version == version for d in sims.ids)


def test_slow_model_aborts_after_the_canary_and_the_canary_returns(
    fleet: FleetDaemons, controller: tuple[FleetClient, SimFleet]
) -> None:
    """cam-1 (the canary) takes a model that serves a tenth of the frames; its own probation
    lets it through (relaxed here), the controller's --min-fps-ratio catches it, aborts before
    cam-2 and cam-3 are published, and rolls cam-1 back."""
    api, _ = controller
    old = fleet.model_version(0) or 1
    version = old + 1
    slow = slow_v2_bundle(fleet.env.root / f"v{version}-slow", version=version)
    rid = _rollout(
        api, fleet, slow, version=version, target=f"group:{fleet.options.group}", canary="1",
        waves=["100%"], soak_s=30, min_fps_ratio=0.5,
    )  # fmt: skip
    status = wait_for(lambda: _ended(api, rid), 200, "the abort", step=1.0)
    assert status["state"] == "aborted", status["counts"]
    assert status["tripped"] == ["cam-1"], status
    assert "fps" in status["abort_reason"]
    assert status["waves"][1]["started_at"] is None
    assert status["devices"]["cam-2"]["published_at"] is None
    back = fleet.wait_ota(0, version, "rolled_back", 90)
    assert back["op"] == "rollback", back
    since = time.time()
    for i in range(3):
        fleet.wait_version(i, old, 30, since=since)


def test_kill_and_restart_one_daemon(fleet: FleetDaemons) -> None:
    version = fleet.model_version(1)
    fleet.kill(1)
    state = fleet.latest(1, "state")
    assert state is not None and state["state"] == "offline" and state["reason"] == "lost", state
    assert all(fleet.online(i) for i in (0, 2))
    fleet.restart(1)
    assert fleet.online(1)
    assert fleet.model_version(1) == version
