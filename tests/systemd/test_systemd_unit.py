"""The service unit: `systemd-analyze verify` passes without warnings and
`systemd-analyze security --offline=true` rates its exposure at most 3.0 (recorded in README)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config.agent import DaemonConfig
from tests.assets import DEFAULT_CONFIG, REPO, SYSTEMD_DIR
from tests.helpers.cli_util import run_cli

UNIT = SYSTEMD_DIR / "edge-agent.service"
INSTALLED_BIN = "/opt/edge-agent/venv/bin/edge-agent"
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (repeatable keys keep every value)."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _testable_unit(tmp_path: Path) -> Path:
    """The unit with its binary pointed at this checkout's entry point (verify checks that the
    ExecStart binary exists)."""
    binary = REPO / ".venv" / "bin" / "edge-agent"
    if not binary.exists():
        found = shutil.which("edge-agent")
        if found is None:
            pytest.skip("no edge-agent entry point installed")
        binary = Path(found)
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(binary)))
    return unit


@needs_analyze
def test_verify_passes_without_warnings(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _testable_unit(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    about_us = [ln for ln in output.splitlines() if "edge-agent" in ln]
    assert about_us == [], output


@needs_analyze
def test_security_exposure_is_at_most_3(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _testable_unit(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    score = float(match.group(1))
    assert score <= 3.0, proc.stdout
    readme = (REPO / "README.md").read_text()
    assert f"exposure level {score:.1f}" in readme, "record the measured score in README.md"


def test_unit_settings_the_daemon_relies_on() -> None:
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"{INSTALLED_BIN} run --config /etc/edge-agent/agent.yaml"
    assert one["ExecStartPre"].startswith(f"{INSTALLED_BIN} validate-config ")
    assert one["ExecStartPre"].endswith(" /etc/edge-agent/agent.yaml")
    assert one["Restart"] == "on-failure" and "2" in one["RestartPreventExitStatus"].split()
    assert int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert one["KillMode"] == "mixed" and one["OOMPolicy"] == "continue"
    assert int(one["OOMScoreAdjust"]) < 0
    assert one["User"] == "edge-agent" and "video" in one["SupplementaryGroups"].split()
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert one["DevicePolicy"] == "closed"
    assert "/dev/nvmap rw" in d["DeviceAllow"] and "char-video4linux rw" in d["DeviceAllow"]
    assert "MemoryDenyWriteExecute" not in d  # CUDA/NVRTC JIT needs W+X
    assert "ProcSubset" not in d  # would hide /proc/meminfo and /proc/device-tree
    assert "PrivateNetwork" not in d  # MQTT
    assert one["ReadWritePaths"].split() == ["/var/lib/edge-agent", "/var/cache/edge-agent"]
    # The drain must fit in the stop timeout: daemon.stop_timeout_s defaults to 10 s.
    assert int(one["TimeoutStopSec"]) > DaemonConfig().stop_timeout_s
    # Watchdog pings come at half WatchdogSec; a stuck pipeline is detected after
    # daemon.progress_timeout_s, so WatchdogSec must not be shorter than the ping period.
    assert int(one["WatchdogSec"]) >= 2


def test_validate_config_syntax_in_exec_start_pre_is_real(tmp_path: Path) -> None:
    """ExecStartPre's command line is accepted by the real CLI."""
    d = directives(UNIT.read_text())
    args = d["ExecStartPre"][-1].split()[1:]
    config = DEFAULT_CONFIG
    proc = run_cli(*[str(config) if a == "/etc/edge-agent/agent.yaml" else a for a in args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
