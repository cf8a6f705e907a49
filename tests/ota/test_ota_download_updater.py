"""A download that times out fails its update (``download_timeout``) and frees the updater
thread: the next push, queued behind it, goes active. Public Updater API only; ports faked."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config.agent import OtaConfig
from agent.ota.manifest import Payload
from agent.ota.ports import UpdaterPorts
from agent.ota.updater import Updater
from tests.fakes.ota_ports import FakeBuilder, FakeServing, ListPublisher, ScriptedAdmission
from tests.helpers.ota_support import (
    copy_bundle,
    envelope_bytes,
    file_payload,
    manifest_for,
    new_key,
    verifier,
    write_trust,
)
from tests.ota.test_ota_download_deadline import HEADERS, raw_server, trickle

MODEL = "shapes-cls"


def test_timed_out_download_does_not_hold_the_updater(tmp_path: Path) -> None:
    key = new_key()
    bundle = copy_bundle(tmp_path / "bundle")
    publisher = ListPublisher()
    ports = UpdaterPorts(
        builder=FakeBuilder(tmp_path / "artifacts"),
        serving=FakeServing(),
        admission=ScriptedAdmission(),
        publisher=publisher,
    )
    config = OtaConfig(
        download_timeout_s=2.0, probation_s=0.2, probation_interval_s=0.02, build_poll_s=0.01
    )
    v = verifier(tmp_path / "state", write_trust(tmp_path / "trust", key))
    up = Updater(v, ports, config=config, initial_bundles={MODEL: copy_bundle(tmp_path / "i")})
    up.recover()
    with raw_server(trickle(HEADERS)) as port:
        slow = Payload(kind="url", base_url=f"http://127.0.0.1:{port}/b")
        up.start()
        try:
            up.submit(envelope_bytes(manifest_for(bundle, 1, slow), key))
            up.submit(envelope_bytes(manifest_for(bundle, 2, file_payload(bundle)), key))
            give_up = time.monotonic() + 60
            while time.monotonic() < give_up:
                if any(s["version"] == 2 and s["state"] == "active" for s in publisher.states):
                    break
                time.sleep(0.05)
        finally:
            up.stop()
    ends = {s["version"]: s for s in publisher.states if s["state"] in ("failed", "active")}
    assert ends[1]["state"] == "failed" and ends[1]["reason"] == "download_timeout", ends[1]
    assert f"127.0.0.1:{port}" in ends[1]["detail"]
    assert ends[2]["state"] == "active", ends.get(2)
    assert up.committed()[MODEL].version == 2
