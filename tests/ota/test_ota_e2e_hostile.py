"""Hostile input on the OTA topic, end to end (issue #14, items 1, 2 and 8): the real daemon, a
real Mosquitto, an attacker who can publish on the device's OTA topic but holds no signing key.

* a signed inline push interleaved with a forged chunk (the public manifest sha256 and
  ``"count": 999``), a 100k-deep JSON message and 3,000 padded chunk messages for unknown
  manifests still goes ``active``; the forged, deep and padded messages are counted as dropped
  and the daemon's RSS grows < 64 MiB under the flood;
* the same signed manifest retried after a failed transfer (a forged chunk of the right size
  made the file hash fail) goes ``active``; a different
  manifest at that version is refused;
* garbage on the OTA topic leaves the retained ``model`` record alone.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.fleet.push import bundle_files, chunk_messages, make_manifest
from agent.ota.manifest import Payload, manifest_sha256, sign_manifest
from agent.ota.trust import load_private_key
from tests.helpers.broker import mosquitto_binary
from tests.helpers.ota_e2e_util import (
    MODEL,
    Env,
    open_env,
    perturbed_bundle,
    write_config,
)
from tests.helpers.ota_hostile import (
    Publisher,
    RssWatch,
    deep_message,
    drop_counts,
    forged_chunk,
    padded_chunks,
    wait_drops,
)
from tests.ota.test_ota_e2e import FLEET, Device

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]

FLOOD = 3000


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with open_env(tmp_path_factory.mktemp("ota-hostile")) as e:
        yield e


@pytest.fixture(scope="module")
def device(env: Env) -> Iterator[Device]:
    d = env.root / "target"
    d.mkdir()
    config = write_config(
        d / "agent.yaml",
        fleet=FLEET,
        device="target",
        bundle=env.base,
        video=env.video,
        state_dir=d / "state",
        trust_dir=env.trust,
        probation_s=1.0,
        extra_ota={"inline_timeout_s": 30},
    )
    dev = Device(env, "target", d, config).start()
    try:
        yield dev
    finally:
        dev.close()


@pytest.fixture(scope="module")
def attacker(env: Env) -> Iterator[Publisher]:
    pub = Publisher(env.broker.url)
    try:
        yield pub
    finally:
        pub.close()


def inline_push(env: Env, version: int, salt: int) -> tuple[bytes, list[bytes], str]:
    """(signed envelope, chunk messages, manifest sha256) of an inline push of a new engine."""
    bundle = perturbed_bundle(env.root / f"v{version}-{salt}", version=version, salt=salt)
    files = bundle_files(bundle)
    manifest = make_manifest(
        files,
        name=MODEL,
        version=version,
        fleet=FLEET,
        device="target",
        payload=Payload(kind="inline", chunk_size=64 * 1024),
    )
    envelope = sign_manifest(manifest, [load_private_key(env.key)])
    chunks = list(chunk_messages(manifest, envelope["manifest"], files))
    return json.dumps(envelope).encode(), chunks, manifest_sha256(envelope["manifest"])


def ota_topic(dev: Device) -> str:
    return f"{dev.topic}/ota"


def _wait_flood_drained(device: Device, timeout: float = 60.0) -> None:
    """Until the flood's drops (queue_full, evicted, buffer_full) have stopped growing for 3 s
    (the daemon summarises its drops at most every 2 s): it has read what the broker held."""
    assert device.daemon is not None
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        counts = drop_counts(device.daemon)
        total = sum(counts.get(k, 0) for k in ("queue_full", "evicted", "buffer_full"))
        if total != last:
            last, since = total, time.monotonic()
        elif total > 0 and time.monotonic() - since >= 3.0:
            return
        time.sleep(0.2)


def test_signed_push_survives_forged_deep_and_flooding_messages(
    env: Env, device: Device, attacker: Publisher
) -> None:
    assert device.daemon is not None
    envelope, chunks, _sha = inline_push(env, 2, salt=11)
    topic = ota_topic(device)
    watch = RssWatch(device.daemon.pid)
    try:
        attacker.publish(topic, [forged_chunk(chunks[-1])])  # before its manifest
        attacker.publish(topic, [envelope, forged_chunk(chunks[0]), deep_message()])
        attacker.publish(topic, chunks[: len(chunks) // 2])
        flood = padded_chunks(FLOOD)
        for i in range(0, FLOOD, 250):
            attacker.publish(topic, flood[i : i + 250], qos=0)
        del flood
        # the daemon's inbox is bounded: sent into the flood's tail, the second pair could be
        # dropped as queue_full instead of as what it is; send it once the flood has drained
        _wait_flood_drained(device)
        attacker.publish(topic, [forged_chunk(chunks[1]), deep_message()])
        time.sleep(1.0)
        attacker.publish(topic, chunks[len(chunks) // 2 :])
        final = device.final_state(2, timeout=90)
    finally:
        grew = watch.stop()
    assert final["state"] == "active", final
    assert grew < 64, f"daemon RSS grew {grew:.1f} MiB under the flood ({watch.start_mib:.0f})"
    counts = wait_drops(device.daemon, {"count_mismatch": 2, "too_deep": 2})
    flood_drops = sum(counts.get(k, 0) for k in ("queue_full", "evicted", "buffer_full"))
    print(f"RSS {watch.start_mib:.0f} MiB, peak +{grew:.1f} MiB; drops {counts}")
    assert counts.get("count_mismatch", 0) >= 2 and counts.get("too_deep", 0) >= 2, counts
    assert flood_drops >= FLOOD // 2, counts


def test_same_manifest_retries_a_failed_transfer(
    env: Env, device: Device, attacker: Publisher
) -> None:
    envelope, chunks, sha = inline_push(env, 3, salt=12)
    topic = ota_topic(device)
    # a forged chunk of the right size overtakes the real one: only the file hash can tell,
    # the transfer fails (hash_mismatch) ...
    doc = json.loads(chunks[-1])
    data = bytearray(base64.b64decode(doc["data"]))
    data[0] ^= 0xFF
    forged = json.dumps(dict(doc, data=base64.b64encode(bytes(data)).decode())).encode()
    attacker.publish(topic, [envelope, forged, *chunks])
    failed = device.final_state(3, timeout=30)
    assert failed["state"] == "rejected" and failed["reason"] == "hash_mismatch", failed
    assert device.watch is not None
    device.watch.messages.clear()
    # ... and the same signed manifest, sent again, goes active: the version was not burnt
    attacker.publish(topic, [envelope, *chunks])
    final = device.final_state(3, timeout=90)
    assert final["state"] == "active" and final["manifest_sha256"] == sha, final
    committed = device.committed()
    assert committed is not None and committed["version"] == 3
    # a different manifest at the used version is refused
    other, _, _ = inline_push(env, 3, salt=13)
    device.watch.messages.clear()
    attacker.publish(topic, [other])
    refused = device.final_state(3, timeout=30)
    assert refused["state"] == "rejected" and refused["reason"] == "not_newer", refused


def test_garbage_leaves_the_retained_model_record_alone(
    device: Device, attacker: Publisher
) -> None:
    assert device.daemon is not None
    before = device.retained_state()
    garbage: list[Any] = [
        {"manifest": {"name": "evil", "version": 999}, "signatures": []},
        {"manifest": {"name": "evil", "version": 999, "state": "active"}, "signatures": [{}]},
        {"manifest": {"name": "\ud800", "version": 1000}, "signatures": []},
    ]
    payloads = [json.dumps(g).encode() for g in garbage] + [b"\xff garbage", b"{"]
    seen = drop_counts(device.daemon)
    attacker.publish(ota_topic(device), payloads)
    want = {
        "unverified_malformed": seen.get("unverified_malformed", 0) + 2,
        "not_json": seen.get("not_json", 0) + 1,
    }
    counts = wait_drops(device.daemon, want)
    assert all(counts.get(k, 0) >= n for k, n in want.items()), counts
    after = device.retained_state()
    assert after["version"] == before["version"] and after["state"] == before["state"], after
    assert after["id"] == before["id"] and after["updated_at"] == before["updated_at"]
    journal = json.loads(Path(device.dir / "state/ota/journal.json").read_text())
    assert journal["version"] == before["version"] and journal["id"] == before["id"]
