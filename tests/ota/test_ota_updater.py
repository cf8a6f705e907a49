"""The updater state machine end to end with the real engine build (cpu profile, fp32, one
shared engine cache so that only the first build is a real one), real files and real keys;
activation and probation are test hooks that record what they are asked."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.app.ota_adapters import engine_build_hook
from agent.config.agent import OtaConfig
from agent.config.profiles.store import ProfileStore
from agent.engine.cache import MANIFEST
from agent.fleet.push import bundle_files, chunk_messages
from agent.fleet.server import BundleServer
from agent.ota.chunks import BufferLimits
from agent.ota.inbox import Inbox, InboxLimits
from agent.ota.manifest import Payload, manifest_sha256
from agent.ota.ports import UpdaterPorts
from agent.ota.record import BuildResult, ProbationSample
from agent.ota.states import TERMINAL, TRANSITIONS, UpdateState
from agent.ota.updater import Updater
from tests.assets import CLS_CALIB as CALIB
from tests.fakes.ota_ports import Crash
from tests.helpers.ota_support import (
    HAPPY,
    copy_bundle,
    envelope_bytes,
    file_payload,
    manifest_for,
    new_key,
    verifier,
    write_trust,
)

MODEL = "shapes-cls"


@dataclass
class Recorder:
    """Test hooks: records activations and published states; probation behaviour settable."""

    build_fn: Any
    sample: ProbationSample | None = None
    fps_fraction: float = 1.0
    allowed: list[bool] = field(default_factory=list[bool])
    crash_in_build: bool = False
    activations: list[tuple[str, Path, BuildResult]] = field(default_factory=list[Any])
    states: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    admission_calls: int = 0
    last_result: BuildResult | None = None
    golden: Any = None

    def build(self, bundle_dir: Path) -> BuildResult:
        if self.crash_in_build:
            raise Crash
        result: BuildResult = self.build_fn(bundle_dir)
        self.last_result = result
        return result

    def activate(self, model: str, bundle_dir: Path, result: BuildResult) -> None:
        assert result.artifact_dir.is_dir()
        self.activations.append((model, bundle_dir, result))

    def probation_sample(self) -> ProbationSample:
        if self.sample is not None:
            return self.sample
        current = self.activations[-1][2]
        assert current.validated_fps is not None
        return ProbationSample(fps=current.validated_fps * self.fps_fraction, frames=10)

    def baseline_sample(self, model: str) -> ProbationSample | None:
        del model

    def builds_allowed(self) -> bool:
        self.admission_calls += 1
        return self.allowed.pop(0) if self.allowed else True

    def check_golden(self, result: BuildResult, bundle_dir: Path) -> None:
        if self.golden is not None:
            self.golden(result, bundle_dir)

    def publish_state(self, record: dict[str, Any]) -> None:
        self.states.append(record)

    def ports(self) -> UpdaterPorts:
        """The recorder is every port of the updater."""
        return UpdaterPorts(builder=self, serving=self, admission=self, publisher=self)

    def trail(self, update_id: str | None = None) -> list[str]:
        rid = update_id or self.states[-1]["id"]
        out: list[str] = []
        for s in self.states:
            if s["id"] == rid and (not out or out[-1] != s["state"]):
                out.append(s["state"])
        return out


@pytest.fixture(scope="module")
def build_fn(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.mktemp("engine-cache")
    return engine_build_hook(
        ProfileStore().load("cpu"),
        cache_dir=cache,
        calib_dirs={MODEL: CALIB},
        precision="fp32",
        gate_seconds=0.2,
    )


@dataclass
class Env:
    tmp: Path
    key: Any
    trust: Path
    bundle: Path
    initial: Path
    rec: Recorder
    config: OtaConfig

    def updater(self, **cfg: Any) -> Updater:
        config = self.config.model_copy(update=cfg) if cfg else self.config
        v = verifier(self.tmp / "state", self.trust, keep=config.keep_versions)
        return Updater(v, self.rec.ports(), config=config, initial_bundles={MODEL: self.initial})

    def push(
        self, updater: Updater, version: int, payload: Payload | None = None, **kw: Any
    ) -> bytes:
        manifest = manifest_for(self.bundle, version, payload or file_payload(self.bundle), **kw)
        data = envelope_bytes(manifest, self.key)
        updater.submit(data)
        assert updater.run_once(5)
        return data


@pytest.fixture
def env(tmp_path: Path, build_fn: Any) -> Iterator[Env]:
    key = new_key()
    config = OtaConfig(
        probation_s=0.3,
        probation_interval_s=0.05,
        build_poll_s=0.05,
        keep_versions=3,
        inline_timeout_s=5,
    )
    yield Env(
        tmp=tmp_path,
        key=key,
        trust=write_trust(tmp_path / "trust", key),
        bundle=copy_bundle(tmp_path / "bundle"),
        initial=copy_bundle(tmp_path / "initial"),
        rec=Recorder(build_fn),
        config=config,
    )


def _journal(env: Env) -> dict[str, Any]:
    return json.loads((env.tmp / "state" / "ota" / "journal.json").read_text())


def test_transition_table_is_closed() -> None:
    for state, targets in TRANSITIONS.items():
        assert targets <= set(UpdateState)
        assert (state in TERMINAL) == (not targets)


def test_happy_path_builds_activates_and_commits(env: Env) -> None:
    up = env.updater()
    assert up.recover().interrupted_at is None
    sent = env.push(up, 1)
    assert env.rec.trail() == HAPPY
    final = env.rec.states[-1]
    assert final["state"] == "active" and final["version"] == 1 and final["reason"] is None
    assert "envelope" not in final and final["transitions"] == HAPPY
    ((model, bundle_dir, result),) = env.rec.activations
    assert model == MODEL and bundle_dir == env.tmp / "state/ota/models/shapes-cls/1"
    assert result.validated_fps is not None and result.validated_fps > 0
    assert result.precision == "fp32" and (result.artifact_dir / MANIFEST).is_file()
    committed = up.committed()[MODEL]
    assert committed.version == 1 and committed.engine_sha256 == result.engine_sha256
    assert up.serving_bundle(MODEL) == bundle_dir
    assert _journal(env)["state"] == "active" and _journal(env)["envelope"]["manifest"]
    assert up.store.high_water(MODEL) == 1
    assert list((env.tmp / "state/ota/staging").iterdir()) == []
    # the stored signed manifest still verifies the installed files
    assert up.store.verify_installed(MODEL, 1)
    # QoS 1 redelivery of the same manifest, also after a restart, changes nothing
    published = len(env.rec.states)
    up.submit(sent)
    assert up.run_once(1)
    restarted = env.updater()
    restarted.recover()
    restarted.submit(sent)
    assert restarted.run_once(1)
    assert len(env.rec.states) == published and restarted.status()["state"] == "active"  # type: ignore[index]


def test_http_and_inline_payloads(env: Env) -> None:
    up = env.updater()
    with BundleServer(bundle_files(env.bundle)) as server:
        env.push(up, 1, Payload(kind="url", base_url=server.base_url))
    assert env.rec.states[-1]["state"] == "active"

    manifest = manifest_for(env.bundle, 2, Payload(kind="inline", chunk_size=2048))
    chunks = list(chunk_messages(manifest, manifest.to_json(), bundle_files(env.bundle)))
    for c in chunks[:2]:  # some chunks overtake their manifest
        up.submit(c)
    up.submit(envelope_bytes(manifest, env.key))
    for c in reversed(chunks[2:]):
        up.submit(c)
    while up.run_once(0.2):
        pass
    assert env.rec.trail() == HAPPY, env.rec.states[-1]
    assert up.committed()[MODEL].version == 2


def test_inline_missing_chunk_fails_and_the_same_manifest_may_retry(env: Env) -> None:
    up = env.updater(inline_timeout_s=0.5)
    manifest = manifest_for(env.bundle, 3, Payload(kind="inline", chunk_size=2048))
    chunks = list(chunk_messages(manifest, manifest.to_json(), bundle_files(env.bundle)))
    envelope = envelope_bytes(manifest, env.key)
    up.submit(envelope)
    for c in chunks[:-1]:
        up.submit(c)
    assert up.run_once(1)
    final = env.rec.states[-1]
    assert final["state"] == "failed" and final["reason"] == "incomplete"
    assert "model.yaml: 1 of 1 missing" in final["detail"]
    assert up.store.versions(MODEL) == [] and up.store.high_water(MODEL) == 3
    # another manifest at the used version is refused ...
    env.push(up, 3, expires_in_s=7200)
    assert env.rec.states[-1]["reason"] == "not_newer"
    # ... the same signed manifest retries the transfer (also after a restart) and goes active
    restarted = env.updater(inline_timeout_s=5)
    restarted.recover()
    restarted.submit(envelope)
    for c in chunks:
        restarted.submit(c)
    assert restarted.run_once(1)
    assert env.rec.trail() == HAPPY and restarted.committed()[MODEL].version == 3
    # once it went past the transfer, the version is used up for that manifest too
    restarted.submit(envelope)
    assert restarted.run_once(1)
    assert env.rec.states[-1]["state"] == "active"  # a duplicate: ignored, nothing published


def test_forged_and_deep_messages_during_an_inline_push_are_dropped(env: Env) -> None:
    up = env.updater()
    manifest = manifest_for(env.bundle, 2, Payload(kind="inline", chunk_size=2048))
    sha = manifest_sha256(manifest.to_json())
    chunks = list(chunk_messages(manifest, manifest.to_json(), bundle_files(env.bundle)))
    forged = dict(json.loads(chunks[0]), count=999)
    up.submit(json.dumps(forged).encode())  # before the manifest: buffered, dropped later
    up.submit(envelope_bytes(manifest, env.key))
    up.submit(json.dumps(dict(forged, index=1)).encode())
    up.submit(b"[" * 100_000 + b"]" * 100_000)
    up.submit(json.dumps({"kind": "chunk", "manifest_sha256": sha, "data": 1}).encode())
    for c in chunks:
        up.submit(c)
    while up.run_once(0.2):
        pass
    assert env.rec.trail() == HAPPY, env.rec.states[-1]
    counts = {"bad_chunk": 1, "count_mismatch": 1, "bad_index": 1, "too_deep": 1}
    assert up.dropped() == counts  # the forged index 1 of a one-chunk file: bad_index


def test_hash_mismatch_after_download_is_rejected_cleanly(env: Env) -> None:
    up = env.updater()
    manifest = manifest_for(env.bundle, 4, file_payload(env.bundle))
    data = bytearray((env.bundle / "model.onnx").read_bytes())
    data[100] ^= 0x01
    (env.bundle / "model.onnx").write_bytes(bytes(data))
    up.submit(envelope_bytes(manifest, env.key))
    assert up.run_once(1)
    assert env.rec.trail() == ["received", "verified", "rejected"]
    assert env.rec.states[-1]["reason"] == "hash_mismatch"
    assert not env.rec.activations and up.store.versions(MODEL) == []
    assert list((env.tmp / "state/ota/staging").iterdir()) == []
    assert up.store.high_water(MODEL) == 4  # burnt: decided in agent/ota/updater.py


def test_unverified_messages_are_counted_not_recorded(env: Env) -> None:
    """Nothing unsigned changes the record (journalled, published retained) or the high-water
    mark: an unknown key, garbage, a lone surrogate in a claimed name are counted drops."""
    up = env.updater()
    env.push(up, 1)
    published = len(env.rec.states)
    stranger = new_key()
    up.submit(envelope_bytes(manifest_for(env.bundle, 9, file_payload(env.bundle)), stranger))
    up.submit(b"{not json")
    up.submit(b'{"manifest": {"name": "\\ud800", "version": 99}, "signatures": []}')
    up.submit(b'{"manifest": {"name": "evil", "version": 99}, "signatures": []}')
    while up.run_once(0.2):
        pass
    assert len(env.rec.states) == published and _journal(env)["state"] == "active"
    assert up.store.high_water(MODEL) == 1
    assert up.dropped() == {
        "bad_unicode": 1,
        "not_json": 1,
        "unverified_malformed": 1,
        "unverified_unknown_key": 1,
    }


def test_probation_nan_rolls_back_to_configured_bundle(env: Env) -> None:
    env.rec.sample = ProbationSample(fps=1000.0, nan_outputs=3, frames=10)
    up = env.updater()
    env.push(up, 1)
    final = env.rec.states[-1]
    assert final["state"] == "rolled_back" and final["reason"] == "probation_nan"
    assert "3 NaN outputs" in final["detail"] and "configured bundle" in final["detail"]
    assert [a[1] for a in env.rec.activations] == [
        env.tmp / "state/ota/models/shapes-cls/1",
        env.initial,
    ]
    assert up.committed() == {} and up.serving_bundle(MODEL) == env.initial


def test_probation_slow_and_crash_roll_back_to_committed(env: Env) -> None:
    up = env.updater()
    env.push(up, 1)
    env.rec.fps_fraction = 0.2
    env.push(up, 2)
    final = env.rec.states[-1]
    assert final["state"] == "rolled_back" and final["reason"] == "probation_slow"
    assert "rolled back to v1" in final["detail"]
    assert env.rec.activations[-1][1] == env.tmp / "state/ota/models/shapes-cls/1"
    assert up.committed()[MODEL].version == 1
    assert up.store.versions(MODEL) == [1]  # the rolled-back v2 is gone (its number is burnt)
    env.rec.fps_fraction = 1.0
    env.rec.sample = ProbationSample(fps=None, crashed=True)
    env.push(up, 3)
    assert env.rec.states[-1]["reason"] == "probation_crash"
    assert up.committed()[MODEL].version == 1


def test_waits_while_builds_are_not_allowed(env: Env) -> None:
    env.rec.allowed = [False, False, False]
    up = env.updater()
    started = time.monotonic()
    env.push(up, 1)
    assert time.monotonic() - started >= 0.1
    assert env.rec.admission_calls >= 4
    waiting = [s for s in env.rec.states if s.get("waiting_for") == "build_admission"]
    assert waiting and waiting[0]["state"] == "downloaded"
    assert env.rec.trail() == HAPPY


def test_build_admission_gives_up(env: Env) -> None:
    env.rec.allowed = [False] * 1000
    up = env.updater(build_wait_max_s=0.2)
    env.push(up, 1)
    final = env.rec.states[-1]
    assert final["state"] == "failed" and final["reason"] == "build_not_admitted"
    assert not env.rec.activations


def test_crash_while_building_recovers_and_resumes(env: Env) -> None:
    up = env.updater()
    env.push(up, 1)
    env.rec.crash_in_build = True
    with pytest.raises(Crash):
        env.push(up, 2)
    assert _journal(env)["state"] == "building"
    (env.tmp / "state/ota/staging/leftover-2-dead").mkdir()

    env.rec.crash_in_build = False
    env.rec.states.clear()
    restarted = env.updater()
    report = restarted.recover()
    assert report.interrupted_at == "building" and report.resumed
    assert report.cleaned == ["leftover-2-dead"]
    assert report.committed[MODEL].version == 1  # unchanged: v1 serves on start
    assert restarted.serving_bundle(MODEL) == env.tmp / "state/ota/models/shapes-cls/1"
    failed = env.rec.states[0]
    assert failed["state"] == "failed" and failed["reason"] == "interrupted at building"
    assert restarted.run_once(1)  # the resumed update
    assert env.rec.trail()[0] == "downloaded" and env.rec.states[-1]["state"] == "active"
    assert env.rec.states[-1]["resumed_from"] == failed["id"]
    assert restarted.committed()[MODEL].version == 2


def test_crash_during_probation_is_not_resumed(env: Env) -> None:
    up = env.updater()
    env.push(up, 1)
    env.rec.sample = None

    def crash() -> ProbationSample:
        raise Crash

    env.rec.probation_sample = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        env.push(env.updater(), 2)
    restarted = env.updater()
    report = restarted.recover()
    assert report.interrupted_at == "probation" and not report.resumed
    assert restarted.status() is not None
    assert restarted.status()["reason"] == "interrupted at probation"  # type: ignore[index]
    assert restarted.committed()[MODEL].version == 1
    assert not restarted.run_once(0.1)


def test_rollback_api_and_keep_last_n(env: Env) -> None:
    up = env.updater(keep_versions=2)
    for version in (1, 2, 3, 4):
        env.push(up, version)
        assert env.rec.states[-1]["state"] == "active"
    assert up.store.versions(MODEL) == [4, 3]
    assert [h.version for h in up.store.history(MODEL)] == [3, 2, 1]

    future = up.rollback(MODEL)
    assert up.run_once(1)
    result = future.result(timeout=1)
    assert result["state"] == "rolled_back" and result["reason"] == "rollback_requested"
    assert "from v4 to v3" in result["detail"]
    assert env.rec.activations[-1][1] == env.tmp / "state/ota/models/shapes-cls/3"
    assert up.committed()[MODEL].version == 3

    # v2 and v1 were pruned: the next rollback falls back to the configured bundle
    future = up.rollback(MODEL)
    assert up.run_once(1)
    assert future.result(timeout=1)["state"] == "rolled_back"
    assert env.rec.activations[-1][1] == env.initial
    assert up.committed() == {} and up.serving_bundle(MODEL) == env.initial

    future = up.rollback(MODEL)
    assert up.run_once(1)
    final = future.result(timeout=1)
    assert final["state"] == "failed" and final["reason"] == "no_rollback_target"
    # a fresh manifest for v4 (or lower) is refused: the high-water mark stays at 4
    env.push(up, 4, expires_in_s=7200)
    assert env.rec.states[-1]["reason"] == "not_newer"


def test_updater_thread_serves_the_queue(env: Env) -> None:
    up = env.updater(probation_s=5.0)
    up.recover()
    up.start()
    try:
        up.submit(envelope_bytes(manifest_for(env.bundle, 1, file_payload(env.bundle)), env.key))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = up.status()
            if status and status["state"] == "probation":
                break
            time.sleep(0.02)
        assert up.status()["state"] == "probation"  # type: ignore[index]
    finally:
        up.stop()  # stopping mid-probation leaves the record for recover()
    assert _journal(env)["state"] == "probation"
    assert not math.isnan(env.rec.activations[0][2].validated_fps or 0.0)
    report = env.updater().recover()
    assert report.interrupted_at == "probation" and report.committed == {}


def test_failing_hooks_fail_the_update_and_keep_the_old_model(env: Env) -> None:
    up = env.updater()
    env.push(up, 1)

    def bad_activate(model: str, bundle_dir: Path, result: BuildResult) -> None:
        raise RuntimeError("runner pool did not warm up")

    env.rec.activate = bad_activate  # type: ignore[method-assign]
    up = env.updater()
    env.push(up, 2)
    final = env.rec.states[-1]
    assert final["state"] == "failed" and final["reason"] == "activate_failed"
    assert "did not warm up" in final["detail"]
    assert up.committed()[MODEL].version == 1 and up.store.versions(MODEL) == [1]

    def bad_build(bundle_dir: Path) -> BuildResult:
        raise ZeroDivisionError("bug in a hook")

    env.rec.build = bad_build  # type: ignore[method-assign]
    up = env.updater()
    env.push(up, 3)
    final = env.rec.states[-1]
    assert final["state"] == "failed" and final["reason"] == "internal_error"
    assert "ZeroDivisionError" in final["detail"]
    assert up.committed()[MODEL].version == 1


def test_from_config(env: Env) -> None:
    from agent.config.agent import AgentConfig
    from agent.ota.verify import DeviceFacts

    cfg = AgentConfig.model_validate(
        {
            "device_id": "dev1",
            "fleet": "fleet1",
            "profile": "cpu",
            "state_dir": str(env.tmp / "state"),
            "models": [{"name": MODEL, "bundle": "initial"}],
            "mqtt": {"group": "lab"},
            "ota": {"enabled": True, "trust_dir": str(env.trust), "probation_s": 0.2},
        }
    )
    facts = DeviceFacts.from_config(cfg, ProfileStore().load("cpu"))
    assert facts.groups == frozenset({"lab"}) and facts.models == frozenset({MODEL})
    assert facts.family == "cpu" and facts.profile == "cpu"
    up = Updater.from_config(cfg, facts, env.rec.ports(), config_dir=env.tmp)
    assert up.serving_bundle(MODEL) == env.initial
    group_push = manifest_for(env.bundle, 1, file_payload(env.bundle), group="lab")
    up.submit(envelope_bytes(group_push, env.key))
    assert up.run_once(5)
    assert env.rec.states[-1]["state"] == "active"
    assert up.serving_bundle(MODEL) == env.tmp / "state/ota/models/shapes-cls/1"


def test_golden_outputs_are_checked(env: Env) -> None:
    import numpy as np
    import onnxruntime as ort

    from agent.app.ota_adapters import golden_checker
    from agent.fleet.push import golden_files, make_manifest
    from agent.ota.manifest import Golden

    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    session = ort.InferenceSession(str(env.bundle / "model.onnx"))
    y = np.asarray(session.run(["logits"], {"images": x})[0], dtype=np.float32)
    env.rec.golden = golden_checker()
    up = env.updater()
    cases_run = ((1, 0.0, "active"), (2, 0.0, "failed"), (3, 0.5, "failed"))
    final: dict[str, Any] = {}
    for version, offset, expected_state in cases_run:
        gdir = env.tmp / f"golden{version}"
        gdir.mkdir()
        np.save(gdir / "a.input.npy", x[:, :, :32] if version == 2 else x)  # 2: wrong shape
        np.save(gdir / "a.expected.npy", y + offset)
        extra, cases = golden_files(gdir)
        files = {**bundle_files(env.bundle), **extra}
        served = env.tmp / f"served{version}"  # bundle and golden files in one tree
        for rel, src in files.items():
            (served / rel).parent.mkdir(parents=True, exist_ok=True)
            (served / rel).write_bytes(src.read_bytes())
        manifest = make_manifest(
            files,
            name=MODEL,
            version=version,
            fleet="fleet1",
            device="dev1",
            payload=Payload(kind="url", base_url=served.as_uri()),
            golden=Golden(input_name="images", output_name="logits", cases=cases, atol="0.001"),
        )
        up.submit(envelope_bytes(manifest, env.key))
        assert up.run_once(5)
        final = env.rec.states[-1]
        assert final["state"] == expected_state, final
        if version == 2:  # a golden input the model cannot take: named, not internal_error
            assert final["reason"] == "golden_mismatch", final
            assert "a.input.npy: cannot run it" in final["detail"], final
    assert final["reason"] == "golden_mismatch" and "exceeds atol" in final["detail"]
    assert up.committed()[MODEL].version == 1


def test_crash_while_downloading_resumes_the_download(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.ota.staging as staging_mod

    real = staging_mod.download_bundle

    def crash(*args: Any, **kwargs: Any) -> None:
        raise Crash

    monkeypatch.setattr(staging_mod, "download_bundle", crash)
    with pytest.raises(Crash):
        env.push(env.updater(), 1)
    assert _journal(env)["state"] == "verified"
    monkeypatch.setattr(staging_mod, "download_bundle", real)
    restarted = env.updater()
    report = restarted.recover()
    assert report.interrupted_at == "verified" and report.resumed
    assert restarted.run_once(1)
    assert env.rec.trail()[0] == "verified" and env.rec.states[-1]["state"] == "active"
    assert restarted.committed()[MODEL].version == 1


def test_killed_between_commit_and_journal_write_finishes_active(env: Env) -> None:
    up = env.updater()
    env.push(up, 1)
    journal = _journal(env)
    journal["state"] = "probation"  # as if the process died right after the commit
    (env.tmp / "state/ota/journal.json").write_text(json.dumps(journal))
    report = env.updater().recover()
    assert report.interrupted_at is None and not report.resumed
    assert report.record is not None and report.record["state"] == "active"
    assert report.committed[MODEL].version == 1


def test_orphan_chunks_stay_within_the_buffer_bound(env: Env) -> None:
    """Chunks whose manifest never comes are buffered within the buffer's bound in all, also
    when they all name the same (unknown) push."""
    limits = InboxLimits(buffer=BufferLimits(max_bytes=2 * 1024 * 1024))
    up = env.updater()
    up.inbox = up.ctx.inbox = Inbox(limits)
    block = "A" * (512 * 1024)
    for i in range(12):  # 6 MiB of chunks for one manifest that never arrives
        chunk = {"kind": "chunk", "manifest_sha256": "f" * 64, "file": "model.onnx"}
        up.submit(json.dumps({**chunk, "index": i, "count": 12, "data": block}).encode())
        up.run_once(0)
    assert 0 < up.inbox.pending.bytes <= 2 * 1024 * 1024
    assert 0 < up.inbox.pending.count < 12
    assert up.dropped() == {"buffer_full": 12 - up.inbox.pending.count}


def test_altered_committed_version_is_not_served_and_says_why(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    up = env.updater()
    env.push(up, 1)
    installed = up.serving_bundle(MODEL)
    assert installed is not None and installed == env.tmp / "state/ota/models/shapes-cls/1"
    (installed / "model.yaml").write_text((installed / "model.yaml").read_text() + "\n# x\n")
    with caplog.at_level("ERROR", logger="agent.ota.updater"):
        assert up.serving_bundle(MODEL) == env.initial
    assert any("no longer matches its signed manifest" in r.getMessage() for r in caplog.records)
