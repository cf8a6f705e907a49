"""``edge-agent keygen | push | ota-status`` through the real CLI; push over a real Mosquitto
broker into a real updater."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.app.ota_adapters import EngineBuilderAdapter, engine_build_hook
from agent.config.agent import OtaConfig
from agent.config.profiles.store import ProfileStore
from agent.ota.fetch import download_bundle
from agent.ota.manifest import key_id
from agent.ota.ports import UpdaterPorts
from agent.ota.record import ProbationSample
from agent.ota.store import VersionStore
from agent.ota.trust import TrustStore, load_private_key
from agent.ota.updater import Updater
from agent.ota.verify import DeviceFacts, Verifier
from tests.assets import CLS_CALIB as CALIB
from tests.assets import REPO
from tests.fakes.ota_ports import FakeServing, ListPublisher
from tests.helpers.broker import Broker, Collector
from tests.helpers.cli_util import run_cli
from tests.helpers.ota_support import DEVICE, FLEET, copy_bundle


def _keygen(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "keys"
    res = run_cli("keygen", "--out", str(out), "--name", "ops", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    priv, pub = Path(info["private_key"]), Path(info["public_key"])
    assert key_id(load_private_key(priv).public_key()) == info["key_id"]
    assert priv.stat().st_mode & 0o777 == 0o600
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "ops.pub").write_bytes(pub.read_bytes())
    return priv, trust


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    _keygen(tmp_path)
    again = run_cli("keygen", "--out", str(tmp_path / "keys"), "--name", "ops")
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr and "fix:" in again.stderr


def test_push_out_file_url_verifies_on_device(tmp_path: Path) -> None:
    priv, trust = _keygen(tmp_path)
    bundle = copy_bundle(tmp_path / "bundle")
    out = tmp_path / "manifest.json"
    res = run_cli(
        "push", str(bundle), "--key", str(priv), "--version", "7", "--expires-in", "2h",
        "--families", "cpu,orin-nano", "--url", bundle.as_uri(),
        "--device", DEVICE, "--fleet", FLEET, "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["topic"] == f"edge/{FLEET}/{DEVICE}/ota" and summary["version"] == 7
    envelope = json.loads(out.read_text())
    m = envelope["manifest"]
    assert m["expires"] - m["created"] == 7200 and m["compat"]["families"] == ["cpu", "orin-nano"]
    store = VersionStore(tmp_path / "state")
    facts = DeviceFacts(fleet=FLEET, device_id=DEVICE, profile="cpu", family="cpu")
    signed = Verifier(TrustStore.load(trust), facts, store).accept(out.read_bytes())
    assert signed.sha256 == summary["manifest_sha256"]
    download_bundle(signed.manifest, tmp_path / "stage")
    assert (tmp_path / "stage" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()


def test_push_usage_errors(tmp_path: Path) -> None:
    priv, _trust = _keygen(tmp_path)
    bundle = copy_bundle(tmp_path / "bundle")
    both = run_cli(
        "push", str(bundle), "--key", str(priv), "--version", "1", "--inline",
        "--device", "a", "--group", "b", "--fleet", FLEET,
    )  # fmt: skip
    assert both.returncode == 2 and "not allowed with" in both.stderr
    big = run_cli(
        "push", str(bundle), "--key", str(priv), "--version", "1", "--inline",
        "--max-inline-mib", "0", "--device", "a", "--fleet", FLEET,
    )  # fmt: skip
    assert big.returncode != 0 and "--serve" in big.stderr
    bad_key = run_cli(
        "push", str(bundle), "--key", str(tmp_path / "trust" / "ops.pub"), "--version", "1",
        "--inline", "--device", "a", "--fleet", FLEET,
    )  # fmt: skip
    assert bad_key.returncode != 0 and "private key" in bad_key.stderr


def test_push_serve_serves_the_files(tmp_path: Path) -> None:
    priv, trust = _keygen(tmp_path)
    bundle = copy_bundle(tmp_path / "bundle")
    out = tmp_path / "m.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "push", str(bundle), "--key", str(priv),
         "--version", "3", "--serve", "--serve-for", "20", "--group", "lab",
         "--fleet", FLEET, "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.is_file(), proc.communicate()[1] if proc.poll() is not None else "no manifest"
        facts = DeviceFacts(
            fleet=FLEET, device_id=DEVICE, profile="cpu", family="cpu", groups=frozenset({"lab"})
        )
        signed = Verifier(TrustStore.load(trust), facts, VersionStore(tmp_path / "s")).accept(
            out.read_bytes()
        )
        base = signed.manifest.payload.base_url or ""
        assert base.startswith("http://127.0.0.1:")
        download_bundle(signed.manifest, tmp_path / "stage", timeout_s=10)
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "stage" / "labels.txt").read_bytes() == (bundle / "labels.txt").read_bytes()


def test_push_inline_over_mqtt_into_updater(tmp_path: Path, broker: Broker) -> None:
    priv, trust = _keygen(tmp_path)
    bundle = copy_bundle(tmp_path / "bundle")
    topic = f"edge/{FLEET}/{DEVICE}/ota"
    with Collector(broker.url, [topic]) as col:
        res = run_cli(
            "push", str(bundle), "--key", str(priv), "--version", "2", "--inline",
            "--chunk-kib", "16", "--device", DEVICE, "--fleet", FLEET,
            "--mqtt-url", broker.url, "--allow-unknown", "--wait", "0",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        sent = json.loads(res.stdout)["published_messages"]
        assert sent >= 3
        assert col.wait_for(lambda msgs: len(msgs) >= sent, 20)
        payloads: list[bytes] = [m.payload for m in col.on(topic)]

    build = engine_build_hook(
        ProfileStore().load("cpu"),
        cache_dir=tmp_path / "cache",
        calib_dirs={"shapes-cls": CALIB},
        precision="fp32",
        gate_seconds=0.2,
    )
    serving = FakeServing(steady=ProbationSample(fps=None))
    publisher = ListPublisher()
    ports = UpdaterPorts(builder=EngineBuilderAdapter(build), serving=serving, publisher=publisher)
    facts = DeviceFacts(fleet=FLEET, device_id=DEVICE, profile="cpu", family="cpu")
    store = VersionStore(tmp_path / "state")
    up = Updater(
        Verifier(TrustStore.load(trust), facts, store),
        ports,
        config=OtaConfig(probation_s=0.1, probation_interval_s=0.05),
    )
    for payload in payloads:
        up.submit(payload)
    while up.run_once(0.2):
        pass
    assert publisher.last["state"] == "active", publisher.last
    assert up.committed()["shapes-cls"].version == 2
    assert serving.activations and serving.activations[0][1] == store.version_dir("shapes-cls", 2)

    status = run_cli("ota-status", "--state-dir", str(tmp_path / "state"), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["journal"]["state"] == "active" and "envelope" not in report["journal"]
    assert report["committed"]["shapes-cls"]["version"] == 2
    assert report["high_water"] == {"shapes-cls": 2}
    assert report["installed"] == {"shapes-cls": [2]}
