"""agent.core.errors: the user-error tree, InternalError apart, and the OTA reason codes."""

from __future__ import annotations

import json
import re

import pytest

from agent.core.errors import (
    EdgeAgentError,
    InternalError,
    OtaError,
    OtaReason,
    OtaRejected,
)
from tests.assets import REPO as ROOT

REJECTIONS = {
    "bad_signature",
    "unknown_key",
    "expired",
    "not_newer",
    "incompatible",
    "wrong_target",
    "size_mismatch",
    "hash_mismatch",
    "over_quota",
    "unsafe_path",
    "external_data_outside_bundle",
    "malformed",
}


def test_user_error_text_names_path_and_fix() -> None:
    err = EdgeAgentError("bad thing", fix="do this", path="/x.yaml")
    assert str(err) == "/x.yaml: bad thing (fix: do this)" and err.exit_code == 1


def test_internal_error_is_not_a_user_error() -> None:
    assert not issubclass(InternalError, EdgeAgentError)


def test_ota_reason_members_equal_their_wire_strings() -> None:
    assert OtaReason.EXPIRED == "expired"
    assert f"{OtaReason.NOT_NEWER}" == "not_newer" and str(OtaReason.NOT_NEWER) == "not_newer"
    assert f"{OtaReason.MALFORMED:>10}" == " malformed"
    assert json.dumps({"reason": OtaReason.OVER_QUOTA}) == '{"reason": "over_quota"}'
    assert OtaReason("hash_mismatch") is OtaReason.HASH_MISMATCH
    assert "unknown_key" in {OtaReason.UNKNOWN_KEY}
    assert {r.value for r in OtaReason} >= REJECTIONS


def test_ota_errors_carry_a_reason() -> None:
    assert OtaError("x").reason == "failed"
    rejected = OtaRejected("x", reason=OtaReason.EXPIRED)
    assert rejected.reason == "expired" and rejected.exit_code == 2
    assert OtaRejected("x").reason == OtaReason.MALFORMED


@pytest.mark.parametrize("folder", ["agent/ota", "agent/fleet"])
def test_every_reason_literal_is_a_member(folder: str) -> None:
    """The codes the OTA code passes to OtaError/OtaRejected are all OtaReason values."""
    known = {r.value for r in OtaReason}
    pattern = re.compile(r"\breason=\"([a-z_]+)\"")
    found = {
        code for path in (ROOT / folder).rglob("*.py") for code in pattern.findall(path.read_text())
    }
    assert found <= known, sorted(found - known)
