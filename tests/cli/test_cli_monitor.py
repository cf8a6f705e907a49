"""``edge-agent monitor`` on fixture roots (no hardware)."""

from __future__ import annotations

import io
import json
import sys

import pytest

from agent.cli import main as cli
from agent.cli import monitor as monitor_cmds
from agent.config.profiles.store import ProfileStore
from agent.monitor.governor.machine import Governor
from agent.monitor.sample import Sample
from tests.assets import BOARDS, SYSFS
from tests.helpers.cli_util import run_cli

NANO_SYSFS = SYSFS / "orin-nano"
THOR_SYSFS = SYSFS / "agx-thor"
HOST = BOARDS / "x86-host"


def invoke(argv: list[str]) -> int:
    """The real CLI entry point, in this process."""
    return cli.main(argv)


needs_sysfs = pytest.mark.skipif(not NANO_SYSFS.is_dir(), reason="no sysfs fixture")


@needs_sysfs
def test_once_json_on_sysfs_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["monitor", "--once", "--json", "--source", "sysfs", "--root", str(NANO_SYSFS)]
    assert invoke([*argv, "--profile", "orin-nano-8gb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["source"] == "sysfs"
    assert data["board_power_w"] > 0
    assert data["power_w"]["VDD_IN"] == data["board_power_w"]
    assert data["max_temp_c"] is not None
    assert 0 < data["memory"]["used_pct"] < 100
    gov = data["governor"]
    assert gov["profile"] == "orin-nano-8gb"
    assert gov["state"] == "normal"
    assert gov["decision"] == {
        "pool_size": 2,
        "fps_cap": None,
        "builds_allowed": True,
        "shed_frames": False,
    }
    assert gov["events"] == []


def test_once_json_on_thor_reports_board_input_and_renamed_rails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["monitor", "--once", "--json", "--source", "sysfs", "--root", str(THOR_SYSFS)]
    assert invoke([*argv, "--profile", "agx-thor-t5000"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["board_power_w"] == pytest.approx(87.426)  # INA238 VIN
    assert data["power_w"]["VIN"] == data["board_power_w"]
    assert set(data["power_w"]) == {"VIN", "VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0"}
    assert data["board_power_limit_w"] == pytest.approx(168.0)
    assert data["throttling"]["vin_alarm"] is False
    assert data["gpu_load_pct"] == pytest.approx(85.0)
    gov = data["governor"]
    assert (gov["profile"], gov["state"], gov["events"]) == ("agx-thor-t5000", "normal", [])


def test_once_json_on_thor_detects_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's own check: no --profile, the tree's device tree picks the board."""
    argv = ["monitor", "--source", "sysfs", "--root", str(THOR_SYSFS), "--once", "--json"]
    assert invoke(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["governor"]["profile"] == "agx-thor-t5000"
    assert data["board_power_w"] == pytest.approx(87.426)


def test_tty_table_on_thor_shows_the_board_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    out = FakeTty()
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["monitor", "--once", "--source", "sysfs", "--root", str(THOR_SYSFS)]
    assert invoke([*argv, "--profile", "agx-thor-t5000"]) == 0
    text = out.getvalue()
    assert "87.43 W / budget 120 W (board limit 168 W)" in text
    for rail in ("VIN ", "VDD_GPU ", "VDD_CPU_SOC_MSS ", "VIN_SYS_5V0 ", "soc012-thermal"):
        assert rail in text


def test_once_json_on_host_fixture_with_auto_profile(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["monitor", "--once", "--json", "--source", "host", "--root", str(HOST)]
    assert invoke(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "host"
    assert data["governor"]["profile"] == "cpu"  # detected: not a Jetson
    assert data["memory"]["total_mib"] > 0
    assert data["board_power_w"] is None  # unknown, not a guess


@needs_sysfs
def test_count_prints_json_lines_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["monitor", "--count", "3", "--interval", "0.01", "--source", "sysfs"]
    assert invoke([*argv, "--root", str(NANO_SYSFS), "--profile", "orin-nano-8gb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    samples = [json.loads(line) for line in lines]
    assert all(s["governor"]["state"] == "normal" for s in samples)
    assert samples[0]["ts"] <= samples[1]["ts"] <= samples[2]["ts"]


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@needs_sysfs
def test_tty_shows_a_refreshing_table(monkeypatch: pytest.MonkeyPatch) -> None:
    out = FakeTty()
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["monitor", "--count", "2", "--interval", "0.01", "--source", "sysfs"]
    assert invoke([*argv, "--root", str(NANO_SYSFS), "--profile", "orin-nano-8gb"]) == 0
    text = out.getvalue()
    # redrawn in place: the second frame moves the cursor back up over the first; no clear
    assert "\x1b[2J" not in text and "\x1b[H" not in text
    assert text.count("A\r") == 1 and "\x1b[K\n" in text
    for needle in ("VDD_IN", "tj-thermal", "ram", "gpu", "nvpmodel", "throttling", "pool size"):
        assert needle in text
    assert "profile orin-nano-8gb" in text


def test_once_on_a_tty_does_not_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    out = FakeTty()
    monkeypatch.setattr(sys, "stdout", out)
    assert invoke(["monitor", "--once", "--source", "host", "--root", str(HOST)]) == 0
    assert "\x1b[2J" not in out.getvalue()
    assert "governor" in out.getvalue()


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(["monitor", "--once", "--root", str(HOST), "--profile", "no-such-board"]) == 2
    assert "not found" in capsys.readouterr().err
    assert invoke(["monitor", "--interval", "0", "--root", str(HOST)]) == 2
    assert "--interval" in capsys.readouterr().err


@needs_sysfs
def test_real_subprocess_once_json() -> None:
    proc = run_cli(
        "monitor",
        "--once",
        "--json",
        "--source",
        "sysfs",
        "--root",
        str(NANO_SYSFS),
        "--profile",
        "orin-nano-8gb",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["governor"]["decision"]["pool_size"] == 2


def test_render_table_marks_unknown() -> None:
    profile = ProfileStore().load("orin-nano-8gb")
    gov = Governor(profile, max_fps=None)
    sample = Sample(ts=0.0, source="sysfs:error")
    text = monitor_cmds.render_table(sample, gov, gov.update(sample))
    assert "board input  ?" in text
    assert "state        normal" in text
