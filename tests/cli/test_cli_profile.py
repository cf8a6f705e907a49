"""`edge-agent profile list | show | detect` through the real console entry point."""

from __future__ import annotations

import json

import yaml

from tests.assets import BOARDS, PROFILES_DIR
from tests.helpers.cli_util import run_cli


def test_list_shows_the_nine_profiles_with_thor() -> None:
    result = run_cli("profile", "list")
    assert result.returncode == 0, result.stderr
    header, rows = result.stdout.splitlines()[0], result.stdout.splitlines()[2:]
    assert header.split()[:3] == ["NAME", "FAMILY", "JETPACK"]
    names = [row.split()[0] for row in rows]
    assert sorted(names) == sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    assert len(names) == 9
    assert "xavier-nx" not in names
    nano4 = next(r for r in rows if r.startswith("orin-nano-4gb "))
    assert " tensorrt " in nano4 and " 8.7 " in nano4 and " 6,7 " in nano4
    t5000 = next(r for r in rows if r.startswith("agx-thor-t5000 "))
    assert t5000.split()[1:3] == ["agx-thor", "7"]
    assert " 11.0 " in t5000 and " 128 GiB " in t5000 and "130W,120W" in t5000
    t4000 = next(r for r in rows if r.startswith("agx-thor-t4000 "))
    assert t4000.endswith("70W budget")


def test_list_json_round_trips() -> None:
    result = run_cli("profile", "list", "--json")
    data = json.loads(result.stdout)
    assert {p["name"] for p in data} >= {"cpu", "agx-orin-64gb", "agx-thor-t5000", "agx-thor-t4000"}
    thor = next(p for p in data if p["name"] == "agx-thor-t5000")
    assert thor["identity"]["family"] == "agx-thor" and thor["identity"]["jetpack"] == ["7"]


def test_show_prints_the_resolved_profile() -> None:
    result = run_cli("profile", "show", "orin-nano-8gb")
    assert result.returncode == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["name"] == "orin-nano-8gb"
    # defaults are filled in, so the resolved view has every section
    assert set(shown) >= {"identity", "build", "shapes", "runtime", "monitor", "telemetry"}


def test_show_unknown_profile_is_a_clear_error() -> None:
    result = run_cli("profile", "show", "orin-nano")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "orin-nano-8gb" in result.stderr and "orin-nano-4gb" in result.stderr


def test_detect_on_fixture_trees() -> None:
    expected = {"orin-nx-16gb": "orin-nx-16gb", "x86-host": "cpu", "agx-orin-64gb": "agx-orin-64gb"}
    for board, profile in expected.items():
        result = run_cli("profile", "detect", "--root", str(BOARDS / board), "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["profile"] == profile
        assert data["reason"]


def test_detect_on_jetpack_7_trees_says_why() -> None:
    # Every new tree is detected in-process in tests/config/test_board_support.py; here the CLI
    # prints the choice, the reason and the JetPack for a Thor and a JetPack 7.2 Orin.
    result = run_cli("profile", "detect", "--root", str(BOARDS / "agx-thor-t4000"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "profile: agx-thor-t4000"
    assert lines[1].startswith("reason:  ") and "module part number p3834-0000" in lines[1]
    assert lines[2] == "jetpack: 7.1 (L4T R38.4.0)"
    root = BOARDS / "orin-nano-8gb-devkit-jp72"
    data = json.loads(run_cli("profile", "detect", "--root", str(root), "--json").stdout)
    assert data["profile"] == "orin-nano-8gb"
    assert "L4T R39.2.1 = JetPack 7.2.1" in data["reason"]
    assert data["board"]["soc"] == "tegra234" and data["board"]["jetpack"] == "7.2.1"


def test_detect_on_jetpack_5_boards_fails_with_what_to_do() -> None:
    for board, says in [
        ("agx-orin-64gb-jp5", "JetPack 5.1.2 is not supported"),
        ("xavier-nx", "Jetson Xavier (Xavier NX, AGX Xavier) is not supported"),
    ]:
        result = run_cli("profile", "detect", "--root", str(BOARDS / board))
        assert result.returncode == 1
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        assert says in result.stderr and "Python 3.8" in result.stderr
        assert "(fix: " in result.stderr and "docs/jetson-devices.md" in result.stderr
