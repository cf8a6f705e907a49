"""The two optional contract fields the registry reads: the birth's ``group`` and the OTA
record's ``artifact.gate`` — built with the daemon's own builders (``state_payload``,
``BuildResult``, ``gate_verdict``), parsed by ``wire`` and merged into the device record."""

from __future__ import annotations

import json
import math
from pathlib import Path

from agent.app.ota_adapters import gate_verdict
from agent.comms.payloads import state_payload
from agent.engine.validate.results import GateReport, PrecisionResult, TaskMetric
from agent.fleet.registry.merge import merge_ota, merge_state
from agent.fleet.registry.wire import parse_ota, parse_state
from agent.ota.record import BuildResult, GateVerdict, Transition, UpdateRecord
from agent.ota.states import UpdateState

T0 = 1_760_000_000.0


def _state(state: str, *, boot: int = 1, group: str | None = None) -> dict[str, object]:
    kw = {"reason": "lost"} if state == "offline" else {}
    raw = state_payload(state, device="d", boot=boot, ts=T0, group=group, **kw)  # type: ignore[arg-type]
    return json.loads(raw)


def test_birth_group_sets_the_record_group_and_offline_keeps_it() -> None:
    birth = parse_state(_state("online", group="line-2"))
    assert birth.group == "line-2"
    rec = merge_state(None, "prod", "d", birth, T0).record
    assert rec is not None and rec.group == "line-2"
    lost = merge_state(rec, "prod", "d", parse_state(_state("offline")), T0 + 1).record
    assert lost is not None and lost.group == "line-2" and not lost.online
    moved = merge_state(lost, "prod", "d", parse_state(_state("online", boot=2)), T0 + 2)
    assert moved.record is not None and moved.record.group is None  # no group any more


def test_group_that_is_not_a_name_is_ignored() -> None:
    for bad in ("Line 2", "a/b", "+", "#", "", "x" * 64, 7, None, ["g"], "$sys"):
        doc = _state("online")
        doc["group"] = bad
        assert parse_state(doc).group is None, bad


def _report(*, ref: float | None, cand: float | None, delta: bool) -> GateReport:
    def task(value: float, d: float | None) -> TaskMetric:
        return TaskMetric("map50", value, value - 0.01, value + 0.01, 50, 120, "wilson", delta=d)

    chosen = PrecisionResult(
        "int8", "box_agreement", 0.97, 0.9, True, True, None,
        task_metric=None if cand is None else task(cand, (cand - ref) if delta and ref else None),
    )  # fmt: skip
    return GateReport(
        task="detect", frames=50, reference="fp32", results={"int8": chosen},
        requested="auto", chosen="int8",
        reference_metric=None if ref is None else task(ref, None),
    )  # fmt: skip


def test_gate_verdict_task_drop_from_delta_or_reference() -> None:
    with_delta = _report(ref=0.80, cand=0.77, delta=True)
    verdict = gate_verdict(with_delta, with_delta.results["int8"])
    assert verdict is not None and verdict.passed and verdict.metric == "box_agreement"
    assert verdict.task_drop is not None and math.isclose(verdict.task_drop, 0.03)
    no_delta = _report(ref=0.80, cand=0.82, delta=False)
    drop = gate_verdict(no_delta, no_delta.results["int8"])
    assert drop is not None and drop.task_drop is not None
    assert math.isclose(drop.task_drop, -0.02)  # better than float: negative drop
    unlabelled = _report(ref=None, cand=None, delta=False)
    v = gate_verdict(unlabelled, unlabelled.results["int8"])
    assert v is not None and v.task_drop is None and v.value == 0.97
    assert gate_verdict(unlabelled, None) is None


def _record(artifact: dict[str, object]) -> dict[str, object]:
    rec = UpdateRecord(
        id="3f9a1c0b7e21", op="update", state=UpdateState.VALIDATING,
        started_at=int(T0), updated_at=int(T0) + 5, model="det", version=4,
        transitions=[Transition(UpdateState.RECEIVED, int(T0), None)],
    )  # fmt: skip
    rec.set(artifact=artifact)
    return json.loads(json.dumps(rec.public_json()))


def test_ota_record_gate_round_trips_to_the_registry() -> None:
    gate = GateVerdict(passed=False, metric="top1_agreement", value=0.91, task_drop=0.042)
    result = BuildResult(Path("/a"), "ab" * 32, 200.0, precision="int8", gate=gate)
    artifact = result.to_json()
    assert artifact["gate"] == {
        "passed": False, "task_drop": 0.042, "metric": "top1_agreement", "value": 0.91
    }  # fmt: skip
    assert BuildResult.from_json(artifact) == BuildResult(
        Path("/a"), "ab" * 32, 200.0, precision="int8", gate=gate
    )
    status = parse_ota(_record(artifact))
    assert status.gate_passed is False and status.task_drop == 0.042
    rec = merge_ota(None, "prod", "d", status, T0).record
    assert rec is not None and rec.ota is not None and rec.ota.gate_passed is False


def test_without_gate_or_with_a_bad_one_nothing_is_known() -> None:
    plain = BuildResult(Path("/a"), "ab" * 32, None).to_json()
    assert "gate" not in plain
    assert BuildResult.from_json(plain).gate is None
    status = parse_ota(_record(plain))
    assert status.gate_passed is None and status.task_drop is None
    bad = {**plain, "gate": {"passed": "yes", "task_drop": "x", "metric": 3, "value": None}}
    assert BuildResult.from_json(bad).gate is None
    status = parse_ota(_record(bad))
    assert status.gate_passed is None and status.task_drop is None
    nan = {**plain, "gate": {"passed": True, "task_drop": None, "metric": "m", "value": 1.0}}
    assert parse_ota(_record(nan)).gate_passed is True
    assert GateVerdict.from_json([1]) is None
