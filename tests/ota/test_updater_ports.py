"""The updater driven against in-memory fakes of its ports (no engine build, no pipeline, no
broker): the real verifier, version store and journal on a temporary state dir."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config.agent import OtaConfig
from agent.core.errors import BuildFailed
from agent.ota.ports import UpdaterPorts
from agent.ota.record import BuildResult, ProbationSample
from agent.ota.updater import Updater
from tests.fakes.ota_ports import Crash, FakeBuilder, FakeServing, ListPublisher, ScriptedAdmission
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


class CrashingBuilder(FakeBuilder):
    def build(self, bundle_dir: Path) -> BuildResult:
        raise Crash


@dataclass
class Rig:
    tmp: Path
    key: Any
    trust: Path
    bundle: Path
    initial: Path
    builder: FakeBuilder
    serving: FakeServing = field(default_factory=FakeServing)
    admission: ScriptedAdmission = field(default_factory=ScriptedAdmission)
    publisher: ListPublisher = field(default_factory=ListPublisher)

    def updater(self, builder: FakeBuilder | None = None, **cfg: Any) -> Updater:
        config = OtaConfig(
            probation_s=0.2, probation_interval_s=0.02, build_poll_s=0.01, keep_versions=3
        ).model_copy(update=cfg)
        ports = UpdaterPorts(
            builder=builder or self.builder,
            serving=self.serving,
            admission=self.admission,
            publisher=self.publisher,
        )
        v = verifier(self.tmp / "state", self.trust, keep=config.keep_versions)
        return Updater(v, ports, config=config, initial_bundles={MODEL: self.initial})

    def push(self, up: Updater, version: int) -> None:
        manifest = manifest_for(self.bundle, version, file_payload(self.bundle))
        up.submit(envelope_bytes(manifest, self.key))
        assert up.run_once(5)

    def version_dir(self, version: int) -> Path:
        return self.tmp / "state" / "ota" / "models" / MODEL / str(version)

    def journal(self) -> dict[str, Any]:
        return json.loads((self.tmp / "state" / "ota" / "journal.json").read_text())


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    key = new_key()
    return Rig(
        tmp=tmp_path,
        key=key,
        trust=write_trust(tmp_path / "trust", key),
        bundle=copy_bundle(tmp_path / "bundle"),
        initial=copy_bundle(tmp_path / "initial"),
        builder=FakeBuilder(tmp_path / "artifacts"),
    )


def test_good_push_goes_active_and_is_committed(rig: Rig) -> None:
    up = rig.updater()
    assert up.recover().interrupted_at is None
    rig.push(up, 1)
    assert rig.publisher.trail() == HAPPY
    last = rig.publisher.last
    assert last["state"] == "active" and last["reason"] is None and "envelope" not in last
    assert last["validated_fps"] == 100.0 and last["previous"]["source"] == "config"
    assert rig.serving.serving == rig.version_dir(1)
    assert up.committed()[MODEL].version == 1
    assert rig.journal()["state"] == "active" and rig.journal()["envelope"]["manifest"]


def test_build_failure_fails_and_keeps_the_old_model(rig: Rig) -> None:
    up = rig.updater()
    rig.push(up, 1)
    rig.builder.fail.add(rig.version_dir(2))
    rig.push(up, 2)
    last = rig.publisher.last
    assert last["state"] == "failed" and last["reason"] == "build_failed"
    assert "fake build failed" in last["detail"]
    assert len(rig.serving.activations) == 1 and rig.serving.serving == rig.version_dir(1)
    assert up.committed()[MODEL].version == 1 and up.store.versions(MODEL) == [1]


def test_golden_mismatch_fails_before_the_swap(rig: Rig) -> None:
    up = rig.updater()
    rig.builder.golden.add(rig.version_dir(1))
    rig.push(up, 1)
    assert rig.publisher.last["reason"] == "golden_mismatch"
    assert rig.serving.activations == [] and up.committed() == {}


def test_activation_failure_fails_and_the_old_model_serves(rig: Rig) -> None:
    up = rig.updater()
    rig.push(up, 1)
    rig.serving.activate_error = RuntimeError("runner pool did not warm up")
    rig.push(up, 2)
    last = rig.publisher.last
    assert last["state"] == "failed" and last["reason"] == "activate_failed"
    assert "did not warm up" in last["detail"] and up.committed()[MODEL].version == 1


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (ProbationSample(fps=None, crashed=True), "probation_crash"),
        (ProbationSample(fps=90.0, nan_outputs=3), "probation_nan"),
    ],
)
def test_probation_fault_rolls_back(rig: Rig, sample: ProbationSample, reason: str) -> None:
    up = rig.updater()
    rig.push(up, 1)
    rig.serving.script([sample])
    rig.push(up, 2)
    last = rig.publisher.last
    assert last["state"] == "rolled_back" and last["reason"] == reason, last
    assert last["detail"].endswith("rolled back to v1")
    assert rig.serving.serving == rig.version_dir(1) and up.committed()[MODEL].version == 1
    assert up.store.versions(MODEL) == [1]  # the burnt version is removed


def test_slow_model_rolls_back_unless_the_old_one_was_as_slow(rig: Rig) -> None:
    up = rig.updater()
    rig.push(up, 1)
    rig.serving.steady = ProbationSample(fps=20.0)
    rig.push(up, 2)
    assert rig.publisher.last["reason"] == "probation_slow"
    assert "below 0.5 × the validated 100.0/s" in rig.publisher.last["detail"]
    rig.serving.baseline = ProbationSample(fps=30.0)  # like for like: 20 ≥ 0.5 × 30
    rig.push(up, 3)
    assert rig.publisher.last["state"] == "active" and rig.publisher.last["baseline_fps"] == 30.0


def test_failed_probation_without_a_previous_version_fails(rig: Rig) -> None:
    up = rig.updater()
    up.ctx.initial_bundles.clear()
    rig.serving.script([ProbationSample(fps=None, crashed=True)])
    rig.push(up, 1)
    last = rig.publisher.last
    assert last["state"] == "failed" and "the new model keeps serving" in last["detail"]


def test_build_admission_is_waited_for(rig: Rig) -> None:
    up = rig.updater()
    rig.admission.answers = [False, False]
    rig.push(up, 1)
    assert any(s.get("waiting_for") == "build_admission" for s in rig.publisher.states)
    assert rig.publisher.last["state"] == "active" and rig.admission.calls == 3
    rig.admission.answers = [False] * 1000
    up = rig.updater(build_wait_max_s=0.05)
    rig.push(up, 2)
    assert rig.publisher.last["reason"] == "build_not_admitted"


def test_rollback_command(rig: Rig) -> None:
    up = rig.updater()
    future = up.rollback(MODEL)
    assert up.run_once(1)
    assert future.result()["state"] == "failed"
    assert future.result()["reason"] == "no_rollback_target"
    rig.push(up, 1)
    rig.push(up, 2)
    future = up.rollback(MODEL)
    assert up.run_once(1)
    record = future.result()
    assert record["state"] == "rolled_back" and record["reason"] == "rollback_requested"
    assert record["detail"] == "rolled back from v2 to v1" and record["op"] == "rollback"
    assert rig.serving.serving == rig.version_dir(1) and up.committed()[MODEL].version == 1
    future = up.rollback(MODEL)  # v1 → the configured bundle
    assert up.run_once(1)
    assert future.result()["state"] == "rolled_back" and MODEL not in up.committed()
    assert rig.serving.serving == rig.initial


def test_recovery_resumes_an_update_interrupted_while_building(rig: Rig) -> None:
    with pytest.raises(Crash):
        rig.push(rig.updater(CrashingBuilder(rig.tmp / "artifacts")), 1)
    assert rig.journal()["state"] == "building"
    restarted = rig.updater()
    report = restarted.recover()
    assert report.interrupted_at == "building" and report.resumed
    assert report.record is not None and report.record["reason"] == "interrupted at building"
    assert restarted.run_once(1)
    assert rig.publisher.trail()[0] == "downloaded" and rig.publisher.last["state"] == "active"
    assert rig.publisher.last["op"] == "resume" and restarted.committed()[MODEL].version == 1


def test_recovery_does_not_resume_an_interrupted_activation(rig: Rig) -> None:
    up = rig.updater()
    rig.push(up, 1)
    rig.serving.activate_error = Crash()
    with pytest.raises(Crash):
        rig.push(rig.updater(), 2)
    assert rig.journal()["state"] == "activating"
    restarted = rig.updater()
    report = restarted.recover()
    assert report.interrupted_at == "activating" and not report.resumed
    assert not restarted.run_once(0)
    assert restarted.committed()[MODEL].version == 1
    assert restarted.serving_bundle(MODEL) == rig.version_dir(1)


def test_a_failing_publisher_does_not_break_the_update(rig: Rig) -> None:
    class Broken(ListPublisher):
        def publish_state(self, record: dict[str, Any]) -> None:
            raise BuildFailed("broker gone", fix="-")

    rig.publisher = Broken()
    up = rig.updater()
    rig.push(up, 1)
    assert up.status() is not None and up.status()["state"] == "active"  # type: ignore[index]
