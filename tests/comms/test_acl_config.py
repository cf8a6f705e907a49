"""Reserved device ids refused by config; the ACL generator and the shipped ACL file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config.agent import AgentConfig
from agent.config.broker import RESERVED_NAMES, check_device_id
from agent.config.load import validate_file
from agent.core.errors import OtaError
from agent.fleet.acl import AclError, AclSpec, check_passwd_users, mosquitto_acl, parse_inventory
from agent.fleet.push import ota_topic

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "mosquitto" / "edge-agent.acl"
GEN = ROOT / "deploy" / "mosquitto" / "gen_acl.py"


def _cfg(device_id: str) -> AgentConfig:
    return AgentConfig.model_validate(
        {"device_id": device_id, "fleet": "f", "models": [{"name": "m", "bundle": "/b"}]}
    )


@pytest.mark.parametrize("device_id", sorted(RESERVED_NAMES))
def test_reserved_device_ids_are_refused_with_a_fix(device_id: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _cfg(device_id)
    (error,) = exc.value.errors()
    assert error["loc"] == ("device_id",)
    assert "reserved" in error["msg"] and f"'{device_id}-1'" in error["msg"]


@pytest.mark.parametrize("device_id", ["", "+", "#", "$SYS", "a/b", "dev+", "Dev1", "a" * 64])
def test_wildcards_and_bad_ids_are_refused(device_id: str) -> None:
    with pytest.raises(ValidationError):
        _cfg(device_id)
    with pytest.raises(ValueError, match="not a device id"):
        check_device_id(device_id)


def test_ordinary_ids_still_pass() -> None:
    for ok in ("dev1", "group-1", "cam.07", "groups", "ota2"):
        assert _cfg(ok).device_id == ok


def test_validate_config_names_the_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("fleet: f\ndevice_id: group\nmodels:\n  - name: m\n    bundle: /b\n")
    issues = [i for i in validate_file(path, "agent")[1] if i.key == "device_id"]
    assert issues and issues[0].line == 2 and "choose another id" in issues[0].message


def test_operator_side_refuses_pushes_to_reserved_devices() -> None:
    assert ota_topic("f", device="dev1") == "edge/f/dev1/ota"
    assert ota_topic("f", group="g1") == "edge/f/group/g1/ota"
    for bad in ("group", "+", "#"):
        with pytest.raises(OtaError):
            ota_topic("f", device=bad)
    with pytest.raises(OtaError):
        ota_topic("f", group="#")


def test_shipped_acl_is_the_generator_output() -> None:
    assert SHIPPED.read_text() == mosquitto_acl(AclSpec("example"))
    cmd = [sys.executable, str(GEN), "--fleet", "example"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == SHIPPED.read_text()


def test_generator_refuses_bad_names(tmp_path: Path) -> None:
    for spec in (
        AclSpec("+"),
        AclSpec("f", operators=("group",)),
        AclSpec("f", operators=()),
        AclSpec("f", members={"group": ("g1",)}),
        AclSpec("f", members={"dev1": ("#",)}),
        AclSpec("f", members={"operator": ("g1",)}),
    ):
        with pytest.raises(AclError):
            mosquitto_acl(spec)
    with pytest.raises(AclError, match="listed twice"):
        parse_inventory("dev1 g1\ndev1 g2\n")
    assert parse_inventory("# c\ndev1 g1 g2  # x\n\ndev2\n") == {"dev1": ("g1", "g2"), "dev2": ()}
    assert check_passwd_users("dev1:$7$x\nop:$7$y\n") == ["dev1", "op"]
    with pytest.raises(AclError, match="broker user"):
        check_passwd_users("dev1:$7$x\ndev2/cmd:$7$y\n")
    inv = tmp_path / "inv.txt"
    inv.write_text("group g1\n")
    out = subprocess.run(
        [sys.executable, str(GEN), "--fleet", "f", "--inventory", str(inv)],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "reserved" in out.stderr and not out.stdout
