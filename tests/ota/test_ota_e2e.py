"""Over-the-air updates end to end: the real daemon (``python -m agent run``) serving a looping
video, a real Mosquitto, real Ed25519 keys from ``edge-agent keygen``, pushes through
``edge-agent push`` (``--serve`` or a loopback :class:`BundleServer`), real ONNX Runtime builds.

What each device (one daemon, its own device id and state dir; one shared engine cache) shows:

* ``good``: a push goes active (retained ``model`` state, metrics engine hash); a flipped byte,
  an expired manifest, a bundle for another device and replayed older versions
  (before and after a restart) are each rejected with their reason while the committed model
  keeps serving; a push signed by an untrusted key is counted as dropped, not recorded.
* ``faulty``: the isolated build child SIGKILLed mid-build → failed; a model emitting NaN and a
  far slower one (data-dependent: fast on the held-out frames the gate measures, slow or NaN on
  the frames served) → rolled back automatically, with their reasons.
* the daemon SIGKILLed during probation and restarted: a committed model serves, and the
  interrupted update is reported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.comms.mqtt import publish_once
from agent.config.broker import MqttConfig
from agent.fleet.push import bundle_files, make_manifest
from agent.fleet.server import BundleServer
from agent.ota.manifest import Payload, sign_manifest
from agent.ota.trust import load_private_key
from tests.assets import REPO
from tests.helpers.broker import Collector, mosquitto_binary
from tests.helpers.ota_e2e_util import (
    MODEL,
    Daemon,
    Env,
    build_children,
    cli_env,
    copy_bundle,
    nan_bundle,
    open_env,
    perturbed_bundle,
    run_cli,
    slow_bundle,
    wait_until,
    write_config,
)
from tests.helpers.ota_hostile import drop_counts, wait_drops

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]

FLEET = "e2e"
TERMINAL = {"active", "rejected", "failed", "rolled_back"}


# --------------------------------------------------------------------------- shared set-up


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with open_env(tmp_path_factory.mktemp("ota-e2e")) as e:
        yield e


@dataclass
class Device:
    """One daemon with its own device id, state dir and MQTT observers."""

    env: Env
    name: str
    dir: Path
    config: Path
    daemon: Daemon | None = None
    watch: Collector | None = None

    @property
    def topic(self) -> str:
        return f"edge/{FLEET}/{self.name}"

    def start(self) -> Device:
        if self.watch is None:
            self.watch = Collector(
                self.env.broker.url,
                [f"{self.topic}/model", f"{self.topic}/metrics", f"{self.topic}/events"],
            )
        self.daemon = Daemon(
            self.config,
            cache_dir=self.env.cache,
            profiles_dir=self.env.profiles,
            mqtt_url=self.env.broker.url,
            log=self.dir / "daemon.log",
        )
        self.metrics_after(time.time(), timeout=90)  # serving and publishing
        return self

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        if self.watch is not None:
            self.watch.close()

    # -- what the device publishes

    def _json(self, kind: str) -> list[dict[str, Any]]:
        assert self.watch is not None
        return [m.json() for m in self.watch.on(f"{self.topic}/{kind}")]

    def metrics_after(self, ts: float, *, timeout: float = 20) -> dict[str, Any]:
        """The first metrics message stamped after ``ts`` (wall clock)."""

        def find() -> dict[str, Any] | None:
            self._check_alive()
            return next((m for m in self._json("metrics") if m["ts"] > ts and "model" in m), None)

        return wait_until(find, timeout, f"{self.name}: metrics after {ts}\n{self._tail()}")

    def serving(self) -> tuple[str, int]:
        """(engine hash, frames so far) from a fresh metrics message."""
        m = self.metrics_after(time.time())
        assert m["models"][MODEL]["engine_hash"] == m["model"]["engine_hash"]
        return m["model"]["engine_hash"], int(m["sources"]["video"]["frames"])

    def final_state(self, version: int, *, timeout: float = 60) -> dict[str, Any]:
        """The model state once the update of ``version`` reached a terminal state."""

        def find() -> dict[str, Any] | None:
            self._check_alive()
            return next(
                (
                    m
                    for m in self._json("model")
                    if m.get("version") == version and m.get("state") in TERMINAL
                ),
                None,
            )

        return wait_until(
            find, timeout, f"{self.name}: a final state of v{version}\n{self._tail()}"
        )

    def wait_state(self, version: int, state: str, *, timeout: float = 60) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            self._check_alive()
            for m in self._json("model"):
                if m.get("version") == version and m.get("state") == state:
                    return m
                if m.get("version") == version and m.get("state") in TERMINAL:
                    raise AssertionError(f"v{version} ended {m['state']} before {state}: {m}")
            return None

        return wait_until(find, timeout, f"{self.name}: v{version} in state {state}")

    def ota_events(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self._json("events") if e.get("kind") == "ota.state"]

    def retained_state(self) -> dict[str, Any]:
        """What a fleet console subscribing now sees on the retained ``model`` topic."""
        with Collector(self.env.broker.url, [f"{self.topic}/model"]) as fresh:
            assert fresh.wait_for(bool, 10), "no retained model state"
            msg = fresh.messages[0]
        assert msg.retain, "the model state must be retained"
        return msg.json()

    def assert_still_serving(self, engine_hash: str) -> None:
        """The same engine serves and frames keep flowing."""
        h1, f1 = self.serving()
        time.sleep(1.0)
        h2, f2 = self.serving()
        assert h1 == h2 == engine_hash, f"{self.name}: engine changed {engine_hash} → {h1}, {h2}"
        assert f2 > f1, f"{self.name}: frames stopped flowing ({f1} → {f2})"

    def committed(self) -> dict[str, Any] | None:
        """The model's committed version from ``committed.json`` (None: none committed)."""
        path = self.dir / "state" / "ota" / "committed.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        return (doc.get(MODEL) or {}).get("current")

    def _check_alive(self) -> None:
        if self.daemon is not None and not self.daemon.alive():
            raise AssertionError(f"{self.name}: the daemon exited\n{self._tail()}")

    def _tail(self) -> str:
        return "" if self.daemon is None else self.daemon.tail(30)


def make_device(env: Env, name: str, *, probation_s: float = 2.0) -> Device:
    d = env.root / name
    d.mkdir()
    config = write_config(
        d / "agent.yaml",
        fleet=FLEET,
        device=name,
        bundle=env.base,
        video=env.video,
        state_dir=d / "state",
        trust_dir=env.trust,
        probation_s=probation_s,
    )
    return Device(env, name, d, config)


# --------------------------------------------------------------------------- pushing


def push_serve(env: Env, bundle: Path, version: int, device: str, out: Path) -> dict[str, Any]:
    """``edge-agent push --serve`` in the background (it serves until the module ends)."""
    cmd = [sys.executable, "-m", "agent", "push", str(bundle), "--key", str(env.key)]
    cmd += ["--version", str(version), "--serve", "--serve-for", "120", "--device", device]
    cmd += ["--fleet", FLEET, "--mqtt-url", env.broker.url, "--out", str(out), "--wait", "0"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    env.pushes.append(proc)
    assert proc.stdout is not None
    text = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        text += line
        if line.startswith("}"):
            return json.loads(text)
    proc.kill()
    raise AssertionError(f"push --serve failed: {text}{proc.stderr.read() if proc.stderr else ''}")


def push_url(
    env: Env, bundle: Path, version: int, device: str, url: str, *, key: Path | None = None
) -> dict[str, Any]:
    res = run_cli(
        "push", str(bundle), "--key", str(key or env.key), "--version", str(version),
        "--url", url, "--device", device, "--fleet", FLEET, "--mqtt-url", env.broker.url,
        "--wait", "0",  # the tests follow the device's states themselves
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def publish(env: Env, device: str, envelope: dict[str, Any] | bytes) -> None:
    """Put a signed envelope on the device's OTA topic, as a broker would deliver it."""
    data = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    mqtt = MqttConfig(enabled=True, url=env.broker.url)
    publish_once(mqtt, f"edge/{FLEET}/{device}/ota", data, qos=1)


def signed_envelope(
    env: Env, bundle: Path, version: int, *, device: str, created: int, lifetime_s: int
) -> dict[str, Any]:
    manifest = make_manifest(
        bundle_files(bundle),
        name=MODEL,
        version=version,
        fleet=FLEET,
        device=device,
        payload=Payload(kind="url", base_url=bundle.resolve().as_uri()),
        expires_in_s=lifetime_s,
        now=created,
    )
    return sign_manifest(manifest, [load_private_key(env.key)])


def assert_rejected(dev: Device, version: int, reason: str, serving: str) -> dict[str, Any]:
    state = dev.final_state(version, timeout=30)
    assert state["state"] == "rejected" and state["reason"] == reason, state
    assert state["detail"], "a rejection says why"
    wait_until(
        lambda: any(
            e.get("version") == version and e.get("reason") == reason for e in dev.ota_events()
        ),
        10,
        f"an ota.state event for v{version} {reason}",
    )
    dev.assert_still_serving(serving)
    return state


# --------------------------------------------------------------------------- device "good"


@pytest.fixture(scope="module")
def good(env: Env) -> Iterator[Device]:
    dev = make_device(env, "good").start()
    try:
        yield dev
    finally:
        dev.close()


@pytest.fixture(scope="module")
def pushed_v2(env: Env, good: Device) -> dict[str, Any]:
    """v2 (a different engine) pushed with ``push --serve``; returns facts for later tests."""
    old_hash, _ = good.serving()
    bundle = perturbed_bundle(env.root / "good-v2", version=2, salt=1)
    summary = push_serve(env, bundle, 2, good.name, env.root / "good-v2.json")
    final = good.final_state(2, timeout=90)
    return {"old_hash": old_hash, "summary": summary, "final": final, "bundle": bundle}


def test_good_push_goes_active_and_metrics_show_the_new_engine(
    good: Device, pushed_v2: dict[str, Any]
) -> None:
    final = pushed_v2["final"]
    assert final["state"] == "active", final
    assert final["transitions"] == [
        "received", "verified", "downloaded", "building", "validating", "activating",
        "probation", "active",
    ]  # fmt: skip
    new_hash = final["artifact"]["engine_sha256"]
    assert new_hash != pushed_v2["old_hash"], "v2 must be a different engine"
    committed = good.committed()
    assert committed is not None and committed["version"] == 2, committed
    assert committed["engine_sha256"] == new_hash
    good.assert_still_serving(new_hash)
    metrics = good.metrics_after(time.time())
    assert metrics["model"]["version"] == 2, "model.yaml version of the pushed bundle"
    retained = good.retained_state()
    assert retained["state"] == "active" and retained["version"] == 2, retained
    assert retained["manifest_sha256"] == pushed_v2["summary"]["manifest_sha256"]


def test_bad_pushes_are_rejected_and_the_committed_model_keeps_serving(
    env: Env, good: Device, pushed_v2: dict[str, Any]
) -> None:
    serving = pushed_v2["final"]["artifact"]["engine_sha256"]
    dev = good.name

    # one flipped byte in the served ONNX: the manifest's hash no longer matches
    flipped = copy_bundle(env.root / "flipped", version=3)
    files = bundle_files(flipped)
    data = bytearray(files["model.onnx"].read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = env.root / "tampered.onnx"
    tampered.write_bytes(bytes(data))
    with BundleServer({**files, "model.onnx": tampered}) as server:
        push_url(env, flipped, 3, dev, server.base_url)
        state = assert_rejected(good, 3, "hash_mismatch", serving)
    assert "model.onnx" in state["detail"]

    # signed by a key this device does not trust: unverified, so counted as dropped and
    # nothing recorded or published (the retained record still describes v3)
    assert good.daemon is not None
    before = drop_counts(good.daemon).get("unverified_unknown_key", 0)
    push_url(env, flipped, 4, dev, flipped.as_uri(), key=env.rogue_key)
    counts = wait_drops(good.daemon, {"unverified_unknown_key": before + 1})
    assert counts.get("unverified_unknown_key", 0) == before + 1, counts
    assert good.retained_state()["version"] == 3
    assert not any(m.get("version") == 4 for m in good._json("model"))  # pyright: ignore[reportPrivateUsage]

    # a valid signature, but expired an hour ago
    now = int(time.time())
    publish(
        env, dev, signed_envelope(env, flipped, 5, device=dev, created=now - 7200, lifetime_s=3600)
    )
    assert_rejected(good, 5, "expired", serving)

    # a bundle for another device, delivered on this device's topic
    other = env.root / "other.json"
    res = run_cli(
        "push", str(flipped), "--key", str(env.key), "--version", "6", "--url", flipped.as_uri(),
        "--device", "someone-else", "--fleet", FLEET, "--out", str(other),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    publish(env, dev, other.read_bytes())
    assert_rejected(good, 6, "wrong_target", serving)

    committed = good.committed()
    assert committed is not None and committed["version"] == 2, committed


def test_replayed_versions_are_refused_before_and_after_a_restart(
    env: Env, good: Device, pushed_v2: dict[str, Any]
) -> None:
    serving = pushed_v2["final"]["artifact"]["engine_sha256"]
    dev = good.name
    # an older push the fleet signed earlier (still within its lifetime), captured and replayed
    old = signed_envelope(
        env, pushed_v2["bundle"], 1, device=dev, created=int(time.time()) - 60, lifetime_s=3600
    )
    publish(env, dev, old)
    assert_rejected(good, 1, "not_newer", serving)

    # restart: the committed v2 serves again and the high-water mark survived
    assert good.daemon is not None
    assert good.daemon.stop() == 0, good.daemon.tail()
    assert good.watch is not None
    good.watch.messages.clear()
    good.start()
    good.assert_still_serving(serving)
    retained = good.retained_state()
    # the last update's record, re-published by the restarted daemon
    assert retained["version"] == 1 and retained["reason"] == "not_newer", retained

    publish(env, dev, old)  # the same old envelope again
    assert_rejected(good, 1, "not_newer", serving)
    # and the very envelope that installed v2
    publish(env, dev, (env.root / "good-v2.json").read_bytes())
    state = assert_rejected(good, 2, "not_newer", serving)
    assert "2" in state["detail"]


# --------------------------------------------------------------------------- device "faulty"


@pytest.fixture(scope="module")
def faulty(env: Env) -> Iterator[Device]:
    dev = make_device(env, "faulty").start()
    try:
        yield dev
    finally:
        dev.close()


def test_build_child_killed_mid_build_fails_the_update(env: Env, faulty: Device) -> None:
    old_hash, _ = faulty.serving()
    bundle = perturbed_bundle(env.root / "faulty-v2", version=2, salt=2)
    push_serve(env, bundle, 2, faulty.name, env.root / "faulty-v2.json")
    faulty.wait_state(2, "building", timeout=30)
    assert faulty.daemon is not None
    killed: list[int] = []

    def kill_children() -> bool:
        for pid in build_children(faulty.daemon.pid):  # type: ignore[union-attr]
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return any(
            m.get("version") == 2 and m.get("state") in TERMINAL
            for m in faulty._json("model")  # pyright: ignore[reportPrivateUsage]
        )

    wait_until(kill_children, 60, "the update to end while its build children are killed", 0.01)
    final = faulty.final_state(2)
    assert killed, "no isolated build child was found to kill"
    assert final["state"] == "failed" and final["reason"] == "build_failed", final
    faulty.assert_still_serving(old_hash)
    assert faulty.committed() is None, "nothing was committed"


def test_model_emitting_nan_is_rolled_back(env: Env, faulty: Device) -> None:
    old_hash, _ = faulty.serving()
    bundle = nan_bundle(env.root / "faulty-nan", version=3)
    push_serve(env, bundle, 3, faulty.name, env.root / "faulty-nan.json")
    final = faulty.final_state(3, timeout=90)
    assert final["state"] == "rolled_back" and final["reason"] == "probation_nan", final
    assert "NaN" in final["detail"] and "rolled back to" in final["detail"]
    assert "probation" in final["transitions"]
    faulty.assert_still_serving(old_hash)
    assert faulty.retained_state()["state"] == "rolled_back"


def test_model_far_slower_than_validated_is_rolled_back(env: Env, faulty: Device) -> None:
    old_hash, _ = faulty.serving()
    bundle = slow_bundle(env.root / "faulty-slow", version=4)
    push_serve(env, bundle, 4, faulty.name, env.root / "faulty-slow.json")
    final = faulty.final_state(4, timeout=90)
    assert final["state"] == "rolled_back" and final["reason"] == "probation_slow", final
    validated = final["validated_fps"]
    assert validated and validated > 0
    assert final["baseline_fps"] and final["baseline_fps"] > 0
    faulty.assert_still_serving(old_hash)


# --------------------------------------------------------------------------- crash during probation


def test_daemon_killed_during_probation_recovers_a_committed_model(env: Env) -> None:
    dev = make_device(env, "crash", probation_s=3.0).start()
    try:
        old_hash, _ = dev.serving()
        bundle = perturbed_bundle(env.root / "crash-v2", version=2, salt=3)
        push_serve(env, bundle, 2, dev.name, env.root / "crash-v2.json")
        probation = dev.wait_state(2, "probation", timeout=60)
        new_hash = probation["artifact"]["engine_sha256"]
        assert dev.daemon is not None
        dev.daemon.kill()
        journal = json.loads((dev.dir / "state" / "ota" / "journal.json").read_text())
        assert journal["state"] in ("probation", "active"), journal

        assert dev.watch is not None
        dev.watch.messages.clear()
        dev.start()
        committed = dev.committed()
        version = None if committed is None else committed["version"]
        expected = {None: old_hash, 2: new_hash}
        assert version in expected, committed
        dev.assert_still_serving(expected[version])
        retained = dev.retained_state()
        assert retained["version"] == 2 and retained["state"] in TERMINAL, retained
        if version is None:  # killed before the commit: the update is reported interrupted
            assert retained["state"] == "failed", retained
            assert retained["reason"] == "interrupted at probation", retained
            wait_until(
                lambda: any(
                    e.get("reason") == "interrupted at probation" for e in dev.ota_events()
                ),
                10,
                "an ota.state event reporting the interrupted update",
            )
        else:
            assert retained["state"] == "active", retained
        status = run_cli("ota-status", "--state-dir", str(dev.dir / "state"), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["journal"]["state"] == retained["state"]
        assert report["high_water"][MODEL] == 2
    finally:
        dev.close()
