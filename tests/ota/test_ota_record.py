"""The typed update record and its state machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.errors import InternalError
from agent.ota.journal import Journal
from agent.ota.record import RollbackTarget, Transition, UpdateRecord
from agent.ota.states import UpdateState, update_machine

S = UpdateState


def _record() -> UpdateRecord:
    rec = UpdateRecord(
        id="abc", op="update", state=S.RECEIVED, started_at=10, updated_at=10,
        transitions=[Transition(S.RECEIVED, 10, None)],
    )  # fmt: skip
    rec.set(model="m", version=3, manifest_sha256="f" * 64, envelope={"manifest": {}})
    rec.set(previous=RollbackTarget(2, "/v/2", "ota"), waiting_for=None)
    return rec


def test_journal_form_round_trips(tmp_path: Path) -> None:
    rec = _record()
    data = rec.to_json()
    assert data["transitions"] == [{"state": "received", "at": 10, "reason": None}]
    assert data["previous"] == {"version": 2, "bundle_dir": "/v/2", "source": "ota"}
    assert data["waiting_for"] is None and "progress" not in data
    assert UpdateRecord.from_json(json.loads(json.dumps(data))).to_json() == data
    journal = Journal(tmp_path / "journal.json")
    journal.write(rec)
    back = journal.read()
    assert back is not None and back.to_json() == data and back.previous == rec.previous


def test_public_form_drops_the_envelope_and_lists_states() -> None:
    public = _record().public_json()
    assert "envelope" not in public and public["transitions"] == ["received"]
    assert list(public)[:9] == [
        "id", "op", "model", "version", "state", "reason", "detail", "started_at", "updated_at",
    ]  # fmt: skip
    assert list(public)[-1] == "transitions"


def test_cleared_fields_leave_the_wire() -> None:
    rec = _record()
    rec.clear("waiting_for")
    assert "waiting_for" not in rec.to_json()
    with pytest.raises(InternalError):
        rec.set(no_such_field=1)


def test_unreadable_journal_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text("{not json")
    assert Journal(path).read() is None
    path.write_text(json.dumps({"state": "nonsense"}))
    assert Journal(path).read() is None


def test_illegal_transition_is_an_internal_error() -> None:
    machine = update_machine(S.RECEIVED)
    machine.to(S.VERIFIED)
    with pytest.raises(InternalError):
        machine.to(S.ACTIVE)
    terminal = update_machine(S.ACTIVE)
    with pytest.raises(InternalError):
        terminal.to(S.FAILED)
