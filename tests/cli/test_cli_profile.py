"""`edge-agent profile list | show | detect` through the real console entry point."""

from __future__ import annotations

import json

import yaml

from tests.assets import BOARDS, PROFILES_DIR
from tests.helpers.cli_util import run_cli


def test_list_shows_the_eight_profiles() -> None:
    result = run_cli("profile", "list")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[2:]
    names = [row.split()[0] for row in rows]
    assert sorted(names) == sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    assert len(names) == 8
    nano4 = next(r for r in rows if r.startswith("orin-nano-4gb "))
    assert " tensorrt " in nano4 and " 8.7 " in nano4


def test_list_json_round_trips() -> None:
    result = run_cli("profile", "list", "--json")
    data = json.loads(result.stdout)
    assert {p["name"] for p in data} >= {"cpu", "agx-orin-64gb", "xavier-nx"}


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
