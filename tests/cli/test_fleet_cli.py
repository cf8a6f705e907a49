"""``edge-agent fleet ...`` as a subprocess against a running controller (SQLite store, real
Mosquitto, simulated devices), ``fleet serve`` as a process, and ``validate-config`` on
fleet.yaml files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.fleet.keygen import generate_keypair
from agent.fleet.sim import SimConfig, SimFleet
from tests.assets import REPO
from tests.helpers.broker import Broker
from tests.helpers.cli_util import run_cli
from tests.helpers.fleet_controller import fleet_config, request, running, wait_for, write_token
from tests.helpers.ota_support import copy_bundle

FLEET = "clif"
DEVICES = 6


@pytest.fixture
def world(broker: Broker, tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = tmp_path / "keys"
    generate_keypair(keys, "ops")
    token_file, _ = write_token(tmp_path / "secrets")
    sim = SimConfig(
        mqtt_url=broker.url, trust_dir=keys, devices=DEVICES, fleet=FLEET, prefix="cli",
        groups=("north", "south"), interval_s=0.3, step_s=0.02, seed=5,
    )  # fmt: skip
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=token_file)
    with SimFleet(sim) as devices, running(cfg, tmp_path) as ctl:
        assert devices.wait_connected(15)
        url = ctl.api_url
        wait_for(
            lambda: len(request(url, "GET", "/api/devices")[1]["devices"]) == DEVICES, 15,
            "the devices in the registry",
        )  # fmt: skip
        yield {"api": url, "token_file": token_file, "key": keys / "ops.key",
               "bundle": copy_bundle(tmp_path / "bundle")}  # fmt: skip


def _cli(
    world: dict[str, Any], *args: str, token: bool = False
) -> subprocess.CompletedProcess[str]:
    extra = ["--api", world["api"]]
    if token:
        extra += ["--token-file", str(world["token_file"])]
    return run_cli("fleet", *args, *extra, timeout=60)


def test_devices_through_the_cli(world: dict[str, Any]) -> None:
    listed = _cli(world, "devices", "--json")
    assert listed.returncode == 0, listed.stderr
    devices = json.loads(listed.stdout)["devices"]
    assert [d["device"] for d in devices] == [f"cli-{i:04d}" for i in range(DEVICES)]
    assert all(d["online"] for d in devices)
    table = _cli(world, "devices")
    assert table.returncode == 0 and "cli-0005" in table.stdout
    assert f"{DEVICES} devices, {DEVICES} online" in table.stdout
    refused = _cli(world, *_start_args(world))  # no token
    assert refused.returncode == 1 and "token" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def _start_args(world: dict[str, Any]) -> list[str]:
    return [
        "rollout", "start", str(world["bundle"]), "--version", "2", "--key", str(world["key"]),
        "--canary", "1", "--waves", "50%,100%", "--rate", "600", "--soak", "0.5",
        "--max-failed-pct", "20", "--json",
    ]  # fmt: skip


def test_a_rollout_through_the_cli(world: dict[str, Any]) -> None:
    started = _cli(world, *_start_args(world), token=True)
    assert started.returncode == 0, started.stderr
    status = json.loads(started.stdout)
    assert status["state"] == "planned" and status["spec"]["max_failed_pct"] == 20
    rid = status["id"]

    watched = _cli(world, "rollout", "status", rid, "--watch", "--json")
    assert watched.returncode == 0, watched.stderr
    final = json.loads(watched.stdout.strip().splitlines()[-1])
    assert final["state"] == "completed" and final["counts"]["active"] == DEVICES
    text = _cli(world, "rollout", "status", rid)
    assert text.returncode == 0 and "completed" in text.stdout and "canary" in text.stdout
    listing = _cli(world, "rollout", "list")
    assert listing.returncode == 0 and rid in listing.stdout


def test_cli_errors_are_one_line_with_exit_codes(world: dict[str, Any], tmp_path: Path) -> None:
    bad = _cli(world, "rollout", "start", str(world["bundle"]), "--version", "2", "--key",
               str(world["key"]), "--waves", "50%", token=True)  # fmt: skip
    assert bad.returncode == 2 and "100%" in bad.stderr and "Traceback" not in bad.stderr
    unknown = _cli(world, "rollout", "status", "0123456789ab")
    assert unknown.returncode == 1 and "no rollout" in unknown.stderr
    down = run_cli("fleet", "devices", "--api", "http://127.0.0.1:9", timeout=30)
    assert down.returncode == 1 and "fleet serve" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    missing = run_cli("fleet", "rollout", "abort", "0123456789ab", "--token-file", "/nonexistent")
    assert missing.returncode == 1 and "token file" in missing.stderr
    foreign = _cli(world, "rollout", "start", str(tmp_path), "--version", "2", "--key",
                   str(world["key"]), token=True)  # fmt: skip
    assert foreign.returncode == 1 and "model.yaml" in foreign.stderr


def test_serve_runs_until_sigterm(broker: Broker, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fleet": "served",
                "mqtt": {"enabled": True, "url": broker.url},
                "store": {"kind": "sqlite", "path": "state/fleet.db"},
                "api": {"port": 0},
                "instance_id": "served-1",
            }
        )
    )
    assert run_cli("validate-config", str(config)).stdout.strip().endswith("ok (fleet)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "serve", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        api = next(line.split()[1] for line in lines if line.startswith("api:"))
        assert any(line.startswith("store:") and "state/fleet.db" in line for line in lines)
        wait_for(lambda: request(api, "GET", "/api/health")[1].get("ok"), 15, "health ok")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "stopped" in out and (tmp_path / "state" / "fleet.db").is_file()
    assert '"fleet controller started"' in err or "fleet controller started" in err


def test_validate_config_knows_fleet_files(tmp_path: Path) -> None:
    example = REPO / "deploy" / "fleet" / "fleet.yaml"
    result = run_cli("validate-config", str(example))
    problems = result.stdout.strip().splitlines()
    # the example's TLS files live on the controller host only: the schema itself is valid
    assert problems and all("does not exist" in p and "mqtt.tls" in p for p in problems)
    bad = tmp_path / "controller.yaml"
    bad.write_text("fleet: Bad Name\nmqtt: {enabled: false}\nshare_group: g\n")
    result = run_cli("validate-config", str(bad))
    assert result.returncode == 2 and "(fleet)" not in result.stdout
    assert "controller.yaml:1: fleet:" in result.stdout
    token = tmp_path / "fleet-a.yaml"
    token.write_text("fleet: a\nmqtt: {enabled: true}\napi: {token_file: nope.token}\n")
    result = run_cli("validate-config", str(token))
    assert result.returncode == 2 and "api.token_file" in result.stdout
