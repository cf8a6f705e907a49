"""The unit's device list against docs/jetson-devices.md and systemd's matching rules.

systemd (``src/core/bpf-devices.c``) allows a ``/dev/PATH`` entry by the node's major:minor
(stat at start) and a ``char-NAME`` entry by every major whose line in the "Character devices:"
section of ``/proc/devices`` matches NAME with ``fnmatch``. The tests below apply exactly that rule
to /proc/devices tables of Jetson releases built from the documented ranges plus the ranges every
host has, so a pattern that matches nothing (the old ``char-nvgpu*``), one that matches another
driver's range, or a documented node that nothing allows, fails here.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.assets import REPO, SYSTEMD_DIR
from tests.systemd.test_systemd_unit import directives

UNIT = SYSTEMD_DIR / "edge-agent.service"
POWER_UNIT = SYSTEMD_DIR / "edge-agent-gpu-power.service"
DOC = REPO / "docs" / "jetson-devices.md"
ANALYZE = shutil.which("systemd-analyze")
POWER_NODE = "/dev/nvgpu/igpu0/power"

# Character ranges of a Jetson that the agent must NOT get (a real R36 Orin's /proc/devices, less
# the ones the table documents): memory, terminals, misc (major 10: nvmap is one of many there),
# input, sound, i2c, SPI, RTC, GPIO, watchdog, USB, NVMe, the Tegra serial ports, ...
HOST_RANGES = (
    "mem", "/dev/vc/0", "tty", "/dev/tty", "/dev/console", "/dev/ptmx", "ttyS", "misc", "input",
    "fb", "i2c", "spi", "alsa", "ptm", "pts", "usb", "usb_device", "ttyTHS", "hidraw", "bsg",
    "watchdog", "rtc", "dma_heap", "nvme-generic", "nvme", "gpiochip", "tpm", "ttyAMA", "aux",
    "cec", "rpmb", "ttyGS", "uio", "ubi_ctrl",
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    nodes: tuple[str, ...]
    proc_name: str | None  # the /proc/devices name, None for a path entry
    releases: str
    entry: str
    source: str


def _spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def table_rows() -> list[Row]:
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `/dev/"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 6, line
        names = _spans(cells[1])
        (entry,) = _spans(cells[4])
        rows.append(
            Row(tuple(_spans(cells[0])), names[0] if names else None, cells[3], entry, cells[5])
        )
    return rows


def unit_entries(path: Path = UNIT) -> list[tuple[str, str]]:
    out = []
    for value in directives(path.read_text()).get("DeviceAllow", []):
        spec, perm = value.split()
        out.append((spec, perm))
    return out


def proc_devices(names: list[str]) -> str:
    """A /proc/devices text: the host ranges, then ``names`` with dynamic majors (one line each,
    repeated names get one line per range, as nvgpu's two ``17000000.gpu`` ranges)."""
    fixed = {"mem": 1, "tty": 4, "misc": 10, "input": 13, "fb": 29, "video4linux": 81, "drm": 226}
    lines, dynamic = ["Character devices:"], 511
    for name in [*HOST_RANGES, *names]:
        major = fixed.get(name)
        if major is None:
            major, dynamic = dynamic, dynamic - 1
        lines.append(f"{major:3d} {name}")
    return "\n".join([*lines, "", "Block devices:", "  8 sd", "259 blkext", ""])


def parse_proc_devices(text: str) -> list[tuple[int, str]]:
    out, good = [], False
    for line in text.splitlines():
        if line == "Character devices:":
            good = True
        elif not line.strip():
            good = False
        elif good:
            major, name = line.split(None, 1)
            out.append((int(major), name.strip()))
    return out


def allowed_majors(entries: list[tuple[str, str]], text: str) -> set[int]:
    """systemd's ``bpf_devices_allow_list_major()`` for every ``char-`` entry."""
    majors = set()
    for spec, _ in entries:
        if spec.startswith("char-"):
            pattern = spec.removeprefix("char-")
            majors |= {m for m, n in parse_proc_devices(text) if fnmatch.fnmatchcase(n, pattern)}
    return majors


def test_every_unit_entry_is_a_table_row_and_back() -> None:
    rows, entries = table_rows(), unit_entries()
    specs = [spec for spec, _ in entries]
    assert len(specs) == len(set(specs)), "an entry appears twice in the unit"
    assert sorted(specs) == sorted(r.entry for r in rows)
    assert {perm for _, perm in entries} == {"rw"}, "no mknod (m), no other permission"
    for row in rows:
        assert row.source and row.releases and row.nodes, row


def test_path_rows_name_their_node_and_class_rows_match_their_range() -> None:
    for row in table_rows():
        if row.entry.startswith("/dev/"):
            assert row.nodes == (row.entry,), "a path entry allows exactly its own node"
            assert "*" not in row.entry and "?" not in row.entry, "systemd does not glob paths"
        else:
            assert row.entry.startswith("char-"), row.entry
            assert row.proc_name is not None, row
            assert fnmatch.fnmatchcase(row.proc_name, row.entry.removeprefix("char-")), row


def test_documented_nodes_are_allowed_and_nothing_else() -> None:
    rows, entries = table_rows(), unit_entries()
    names = [r.proc_name for r in rows if r.entry.startswith("char-") and r.proc_name]
    # nvgpu on R36 registers two ranges under one name (power node; user nodes at power-on).
    text = proc_devices([*names, "17000000.gpu"])
    majors = allowed_majors(entries, text)
    by_name: dict[str, set[int]] = {}
    for major, name in parse_proc_devices(text):
        by_name.setdefault(name, set()).add(major)
    for row in rows:
        if row.proc_name and row.entry.startswith("char-"):
            assert by_name[row.proc_name] <= majors, f"{row.nodes} not allowed"
    host = set().union(*(by_name[n] for n in HOST_RANGES))
    assert not majors & host, "an entry allows a range the table does not document"


def test_the_old_nvgpu_pattern_is_gone_and_would_have_allowed_nothing() -> None:
    assert not any("nvgpu" in spec for spec, _ in unit_entries())
    names = [r.proc_name for r in table_rows() if r.proc_name]
    assert allowed_majors([("char-nvgpu*", "rw")], proc_devices(names)) == set()


def test_device_policy_is_closed_and_no_blanket_entry() -> None:
    d = directives(UNIT.read_text())
    assert d["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in d
    for spec, _ in unit_entries():
        assert spec not in {"char-*", "block-*", "/dev/*"} and not spec.startswith("block-")


def test_r36_user_range_appears_only_after_power_on_so_a_unit_powers_it_first() -> None:
    """Before the GPU's first power-on /proc/devices has only the power node's range: the
    agent's filter (built at start) would not allow /dev/nvgpu/igpu0/ctrl."""
    entries = unit_entries()
    before = proc_devices(["17000000.gpu"])  # power node range only (probe)
    after = proc_devices(["17000000.gpu", "17000000.gpu"])  # + user nodes (first power-on)
    user_major = min(m for m, n in parse_proc_devices(after) if n == "17000000.gpu")
    assert user_major not in allowed_majors(entries, before)
    assert user_major in allowed_majors(entries, after)

    agent = directives(UNIT.read_text())
    assert "edge-agent-gpu-power.service" in " ".join(agent["Wants"]).split()
    assert "edge-agent-gpu-power.service" in " ".join(agent["After"]).split()
    power = directives(POWER_UNIT.read_text())
    assert power["Type"] == ["oneshot"] and power["ConditionPathExists"] == [POWER_NODE]
    assert "edge-agent.service" in power["Before"][0].split()
    assert power["ExecStart"] == [f"/bin/sh -c 'echo 1 > {POWER_NODE}'"]
    assert power["DevicePolicy"] == ["closed"] and power["DeviceAllow"] == [f"{POWER_NODE} w"]
    assert power["CapabilityBoundingSet"] == [""] and power["PrivateNetwork"] == ["yes"]


def test_argus_socket_is_bound_into_the_private_tmp() -> None:
    d = directives(UNIT.read_text())
    assert d["PrivateTmp"] == ["yes"]
    assert "-/tmp/argus_socket" in " ".join(d.get("BindReadOnlyPaths", [])).split()
    assert "nvargus-daemon.service" in " ".join(d["After"]).split()


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_power_unit_verifies_and_is_safe(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = tmp_path / POWER_UNIT.name
    unit.write_text(POWER_UNIT.read_text())
    verify = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and POWER_UNIT.name not in verify.stderr, verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    score = float(match.group(1))
    assert score <= 2.0, security.stdout
    assert f"`systemd-analyze security`: {score:.1f}" in DOC.read_text().replace("\n", " ")
