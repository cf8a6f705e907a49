"""scripts/install.sh in a throwaway root: idempotent, keeps an edited config, DESTDIR works,
--dry-run changes nothing, --uninstall keeps config and state, --purge removes them."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.assets import REPO, SCRIPTS
from tests.helpers.cli_util import run_cli

SCRIPT = SCRIPTS / "install.sh"

pytestmark = pytest.mark.timeout(120)


def _install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("DESTDIR", None)
    full.pop("EDGE_AGENT_NO_VENV", None)
    full.update(env or {})
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=full,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path → (sha256, mode)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (digest, path.stat().st_mode & 0o7777)
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\nvideo:x:44:\nrender:x:105:\njtop:x:998:\n")
    return root


def test_install_twice_gives_the_same_tree(root: Path) -> None:
    _install("--root", str(root), "--no-venv")
    first = _tree(root)
    second_run = _install("--root", str(root), "--no-venv")
    assert _tree(root) == first
    assert "keeping the existing" in second_run.stdout

    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    assert unit == (REPO / "systemd/edge-agent.service").read_text()
    power = (root / "etc/systemd/system/edge-agent-gpu-power.service").read_text()
    assert power == (REPO / "systemd/edge-agent-gpu-power.service").read_text()
    dropin = (root / "etc/systemd/system/edge-agent.service.d/10-groups.conf").read_text()
    assert "SupplementaryGroups=render jtop" in dropin
    config = root / "etc/edge-agent/agent.yaml"
    assert config.read_text() == (REPO / "systemd/agent.example.yaml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    assert "u edge-agent" in (root / "etc/sysusers.d/edge-agent.conf").read_text()
    assert (root / "var/lib/edge-agent/models/shapes-det/model.yaml").is_file()
    assert (root / "var/cache/edge-agent").is_dir()
    assert (root / "opt/edge-agent/share/doc/edge-agent/systemd-README.md").is_file()
    assert (root / "opt/edge-agent/share/doc/edge-agent/jetson-devices.md").is_file()

    # The installed config is valid once its paths point into the staged root.
    staged = root / "agent.yaml"
    staged.write_text(
        config.read_text().replace("/var/lib/edge-agent", f"{root}/var/lib/edge-agent")
    )
    proc = run_cli("validate-config", "--kind", "agent", str(staged))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_edited_config_is_never_overwritten(root: Path) -> None:
    _install("--root", str(root), "--no-venv")
    config = root / "etc/edge-agent/agent.yaml"
    config.write_text(config.read_text().replace("jetson-01", "cam-17"))
    _install("--root", str(root), "--no-venv")
    assert "device_id: cam-17" in config.read_text()


def test_reinstall_after_the_model_was_removed_keeps_calib_flat(root: Path) -> None:
    """Calibration frames collected on the device stay; nothing is copied inside them."""
    import shutil

    _install("--root", str(root), "--no-venv")
    calib = root / "var/lib/edge-agent/calib/shapes-det"
    (calib / "collected-0001.jpg").write_bytes(b"frame")
    shutil.rmtree(root / "var/lib/edge-agent/models/shapes-det")
    _install("--root", str(root), "--no-venv")
    assert (root / "var/lib/edge-agent/models/shapes-det/model.yaml").is_file()
    assert (calib / "collected-0001.jpg").read_bytes() == b"frame"
    assert not (calib / "shapes-det").exists(), "a second copy was nested inside calib/"


def test_groups_that_do_not_exist_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("video:x:44:\n")
    _install("--root", str(root), "--no-venv")
    dropin = (root / "etc/systemd/system/edge-agent.service.d/10-groups.conf").read_text()
    assert "SupplementaryGroups" not in dropin


def test_destdir_and_prefix(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "group").write_text((root / "etc" / "group").read_text())
    _install("--root", str(root), "--no-venv")
    _install("--no-venv", env={"DESTDIR": str(other)})
    assert _tree(other) == _tree(root)

    moved = tmp_path / "moved"
    _install("--root", str(moved), "--no-venv", "--prefix", "/usr/local/edge-agent")
    unit = (moved / "etc/systemd/system/edge-agent.service").read_text()
    assert "/usr/local/edge-agent/venv/bin/edge-agent run --config" in unit
    assert "/opt/edge-agent" not in unit


def test_dry_run_changes_nothing(root: Path) -> None:
    before = _tree(root)
    proc = _install("--root", str(root), "--no-venv", "--dry-run")
    assert "would run:" in proc.stdout
    assert _tree(root) == before


def test_the_venv_step_uses_system_site_packages(root: Path) -> None:
    """Dry run of the venv step: JetPack's TensorRT and OpenCV must stay visible."""
    proc = _install("--root", str(root), "--dry-run")
    venv = root / "opt/edge-agent/venv"
    assert f"-m venv --system-site-packages {venv}" in proc.stdout
    assert f"{venv}/bin/python -m pip" in proc.stdout and str(REPO) in proc.stdout
    # pip is bounded by the constraints generated from the system's numpy, then cv2 is checked.
    assert f"--constraint {venv}/edge-agent-constraints.txt {REPO}" in proc.stdout
    assert f"{venv}/bin/python {REPO}/scripts/device_python.py check" in proc.stdout


def test_uninstall_keeps_config_and_state_and_purge_removes_them(root: Path) -> None:
    _install("--root", str(root), "--no-venv")
    _install("--root", str(root), "--uninstall")
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "etc/systemd/system/edge-agent-gpu-power.service").exists()
    assert not (root / "etc/systemd/system/edge-agent.service.d").exists()
    assert not (root / "etc/sysusers.d/edge-agent.conf").exists()
    assert not (root / "opt/edge-agent").exists()
    assert (root / "etc/edge-agent/agent.yaml").is_file()
    assert (root / "var/lib/edge-agent/models/shapes-det/model.yaml").is_file()
    _install("--root", str(root), "--uninstall")  # idempotent too
    _install("--root", str(root), "--uninstall", "--purge")
    assert not (root / "etc/edge-agent").exists()
    assert not (root / "var/lib/edge-agent").exists()
    assert not (root / "var/cache/edge-agent").exists()


def test_live_install_without_root_privileges_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: the live-system guard does not apply")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--no-venv"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2 and "needs root" in proc.stderr
