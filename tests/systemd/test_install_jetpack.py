"""scripts/install.sh picks the pip constraints of the device's JetPack (constraints/*.txt) from
the L4T release file of a fixture root, agrees with the L4T → JetPack table of
agent/config/profiles/board.py, refuses JetPack 5 before it writes anything, pins jtop's client to
the jtop service; and pip, offline, resolves each constraint file against the `jetson` extra of
pyproject.toml to the cuda-python of that JetPack's CUDA (a directory of tiny fake wheels named
and versioned as on PyPI: `pip index versions cuda-python` / `cuda-bindings`, 2026)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from agent.config.profiles.board import jetpack_for_l4t, parse_l4t_release
from tests.assets import BOARDS, FIXTURES, REPO, SCRIPTS
from tests.systemd.test_device_python import _dist_info, _wheel

SCRIPT = SCRIPTS / "install.sh"
CONSTRAINTS = REPO / "constraints"
JP5_REFUSAL = "JetPack 5 is unsupported (Python 3.8 / TensorRT 8.5), upgrade to JetPack 6"

pytestmark = pytest.mark.timeout(120)


def _release_line(l4t: str) -> str:
    """An ``/etc/nv_tegra_release`` first line in L4T's format (the R36.4.3 line of the board
    fixtures, tests/fixtures/boards/*/etc/nv_tegra_release) for the release ``l4t``."""
    major, minor, patch = l4t.split(".")
    return (
        f"# R{major} (release), REVISION: {minor}.{patch}, GCID: 0, BOARD: generic, EABI: aarch64\n"
    )


def _root(tmp_path: Path, release: str | None) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("video:x:44:\n")
    if release is not None:
        (root / "etc" / "nv_tegra_release").write_text(release)
    return root


def _dry_run(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "EDGE_AGENT_NO_VENV")}
    full.update(env or {})
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), "--dry-run", *args],
        capture_output=True, text=True, timeout=60, check=False, env=full,
    )  # fmt: skip


def _picked(proc: subprocess.CompletedProcess[str]) -> str | None:
    """The constraints file the pip command of the dry run names, or None."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pip = [ln for ln in proc.stdout.splitlines() if " -m pip " in ln]
    assert len(pip) == 1, proc.stdout
    found = re.findall(r"--constraint (\S+/constraints/(jetpack[\d.]+\.txt))", pip[0])
    if not found:
        return None
    path, name = found[0]
    assert Path(path) == CONSTRAINTS / name and (CONSTRAINTS / name).is_file()
    assert "[jetson]" in pip[0].replace("\\", "")
    return name


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ((FIXTURES / "boards/agx-orin-64gb/etc/nv_tegra_release").read_text(), "jetpack6.txt"),
        ((FIXTURES / "boards/orin-nx-16gb/etc/nv_tegra_release").read_text(), "jetpack6.txt"),
        (_release_line("36.3.0"), "jetpack6.0.txt"),
        (_release_line("38.2.1"), "jetpack7.0.txt"),
        (_release_line("38.4.0"), "jetpack7.0.txt"),
        (_release_line("39.2.0"), "jetpack7.2.txt"),
    ],
)
def test_the_release_file_picks_the_jetpack_constraints(
    tmp_path: Path, release: str, expected: str
) -> None:
    proc = _dry_run(_root(tmp_path, release))
    assert _picked(proc) == expected
    assert f"pip constraints constraints/{expected}" in proc.stdout


def _file_for_jetpack(jetpack: str) -> str:
    """What constraints/README.md's table says a JetPack version takes."""
    if jetpack == "6.0":
        return "jetpack6.0.txt"
    if jetpack.startswith("6."):
        return "jetpack6.txt"
    if jetpack.startswith(("7.0", "7.1")):
        return "jetpack7.0.txt"
    assert jetpack.startswith("7.2"), jetpack
    return "jetpack7.2.txt"


@pytest.mark.parametrize(
    "l4t",
    ["36.2.0", "36.3.0", "36.4.0", "36.4.3", "36.4.4", "36.5.0", "38.2.0", "38.4.0", "39.2.0"],
)
def test_the_installer_agrees_with_the_board_table(tmp_path: Path, l4t: str) -> None:
    jetpack = jetpack_for_l4t(l4t)
    assert jetpack is not None
    proc = _dry_run(_root(tmp_path, _release_line(l4t)), "--no-venv")
    assert proc.returncode == 0, proc.stderr
    assert f"pip constraints constraints/{_file_for_jetpack(jetpack)}" in proc.stdout


def test_every_board_fixture_gets_what_board_detection_says(tmp_path: Path) -> None:
    """Each fixture tree's release file: the JetPack of board.py's table, or the JetPack 5
    refusal."""
    releases = sorted(BOARDS.glob("*/etc/nv_tegra_release"))
    assert len(releases) >= 4
    for path in releases:
        text = path.read_text()
        jetpack = jetpack_for_l4t(parse_l4t_release(text))
        assert jetpack is not None, path
        proc = _dry_run(_root(tmp_path / path.parts[-3], text), "--no-venv")
        if jetpack.startswith("5."):
            assert proc.returncode == 2 and JP5_REFUSAL in proc.stderr, path
        else:
            assert proc.returncode == 0, (path, proc.stderr)
            assert f"pip constraints constraints/{_file_for_jetpack(jetpack)}" in proc.stdout


@pytest.mark.parametrize(
    "release",
    [
        (FIXTURES / "boards/xavier-nx/etc/nv_tegra_release").read_text(),
        _release_line("35.6.0"),
    ],
)
def test_jetpack5_is_refused_before_anything_is_written(tmp_path: Path, release: str) -> None:
    root = _root(tmp_path, release)
    before = sorted(root.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), "--no-venv"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"install.sh: error: {JP5_REFUSAL} (L4T R35.")
    assert sorted(root.rglob("*")) == before


def test_jetpack4_and_garbled_or_unknown_releases_are_refused(tmp_path: Path) -> None:
    proc = _dry_run(_root(tmp_path / "a", _release_line("32.7.4")))
    assert proc.returncode == 2 and "JetPack 4 is unsupported" in proc.stderr
    proc = _dry_run(_root(tmp_path / "b", "Jetson Linux\n"))
    assert proc.returncode == 2
    assert "cannot read the L4T release" in proc.stderr and "--jetpack" in proc.stderr
    proc = _dry_run(_root(tmp_path / "c", _release_line("40.1.0")))
    assert proc.returncode == 2 and "L4T R40.1.0" in proc.stderr and "--jetpack" in proc.stderr


def test_the_jetpack_flag_overrides_the_release_file(tmp_path: Path) -> None:
    root = _root(tmp_path, _release_line("36.4.3"))
    assert _picked(_dry_run(root, "--jetpack", "7.2")) == "jetpack7.2.txt"
    assert _picked(_dry_run(root, "--jetpack=7.1")) == "jetpack7.0.txt"
    assert _picked(_dry_run(root, "--jetpack", "6.0")) == "jetpack6.0.txt"
    proc = _dry_run(root, "--jetpack", "5.1.2")
    assert proc.returncode == 2 and JP5_REFUSAL in proc.stderr
    proc = _dry_run(root, "--jetpack", "7")
    assert proc.returncode == 2 and "unknown JetPack '7'" in proc.stderr


def test_a_host_without_a_release_file_gets_no_jetpack_constraints(tmp_path: Path) -> None:
    if "tegra" in os.uname().release:
        pytest.skip("running on a Jetson kernel")
    assert _picked(_dry_run(_root(tmp_path, None))) is None
    # --jetpack stages a Jetson image from any host: the jetson extra with that JetPack's pins.
    assert _picked(_dry_run(_root(tmp_path / "x", None), "--jetpack", "6")) == "jetpack6.txt"


def _fake_system_jtop(tmp_path: Path, version: str) -> dict[str, str]:
    """PYTHONPATH holding a jetson-stats dist-info, as `sudo pip3 install jetson-stats` leaves."""
    _dist_info(tmp_path / "system-site", "jetson_stats", version)
    return {"PYTHONPATH": str(tmp_path / "system-site")}


def test_jtop_client_is_pinned_to_the_system_service(tmp_path: Path) -> None:
    env = _fake_system_jtop(tmp_path, "4.3.1")
    proc = _dry_run(_root(tmp_path, _release_line("36.4.3")), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "jtop client pinned to jetson-stats==4.3.*" in proc.stdout
    # jetson-stats 4.x does not know Thor: JetPack 7 asks for the service to be upgraded first.
    proc = _dry_run(_root(tmp_path / "thor", _release_line("38.2.0")), env=env)
    assert proc.returncode == 2
    assert "jetson-stats 4.3.1" in proc.stderr and "pip3 install -U" in proc.stderr


# --- pip resolves each constraint file against the real `jetson` extra, offline ---------------

# (name, version, requirements): versions that exist on PyPI; cuda-python 13.x is a metapackage
# over cuda-bindings~=13.x.y (its METADATA), 12.x carries the bindings itself.
_PYPI = [
    ("cuda_python", "12.2.1", ()),
    ("cuda_python", "12.6.2.post1", ()),
    ("cuda_python", "12.9.4", ()),
    ("cuda_python", "13.0.3", ("cuda-bindings~=13.0.3",)),
    ("cuda_python", "13.2.0", ("cuda-bindings~=13.2.0",)),
    ("cuda_python", "13.4.4", ("cuda-bindings~=13.4.4",)),
    ("cuda_bindings", "13.0.3", ()),
    ("cuda_bindings", "13.2.0", ()),
    ("cuda_bindings", "13.4.4", ()),
    ("jetson_stats", "4.3.2", ()),
    ("jetson_stats", "7.2.2", ()),
    ("numpy", "1.26.4", ()),
    ("numpy", "2.1.0", ()),
]


def _jetson_extra() -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r"^jetson = \[(.*?)\]$", text, re.M)
    assert match, "no `jetson = [...]` extra in pyproject.toml"
    return re.findall(r'"([^"]+)"', match.group(1))


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index")
    for name, version, requires in _PYPI:
        _wheel(root, name, version, requires)
    _wheel(root, "jetsonapp", "0.1", (*_jetson_extra(), "numpy>=1.24"))
    return root


def _resolve(tmp_path: Path, index: Path, constraints: Path | None) -> dict[str, str]:
    report = tmp_path / "report.json"
    args = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    args += ["--dry-run", "--ignore-installed", "--no-index", "--find-links", str(index)]
    args += ["--report", str(report), "jetsonapp"]
    if constraints is not None:
        args += ["--constraint", str(constraints)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = json.loads(report.read_text())["install"]
    return {
        i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs
    }


def test_without_constraints_pip_takes_cuda_13_which_jetpack6_cannot_use(
    tmp_path: Path, index: Path
) -> None:
    assert _resolve(tmp_path, index, None)["cuda-python"] == "13.4.4"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("jetpack6.0.txt", {"cuda-python": "12.2.1", "cuda-bindings": None}),
        ("jetpack6.txt", {"cuda-python": "12.6.2.post1", "cuda-bindings": None}),
        ("jetpack7.0.txt", {"cuda-python": "13.0.3", "cuda-bindings": "13.0.3"}),
        ("jetpack7.2.txt", {"cuda-python": "13.2.0", "cuda-bindings": "13.2.0"}),
    ],
)
def test_each_constraint_file_resolves_to_its_cuda(
    tmp_path: Path, index: Path, name: str, expected: dict[str, str | None]
) -> None:
    got = _resolve(tmp_path, index, CONSTRAINTS / name)
    assert {k: got.get(k) for k in expected} == expected
    # JetPack's cv2/TensorRT need numpy 1.x; jtop's client is whatever matches the service.
    assert got["numpy"] == "1.26.4" and got["jetson-stats"] == "7.2.2"


def test_every_constraint_file_names_only_jetson_packages() -> None:
    """A typo in a constraint name would silently constrain nothing."""
    allowed = {Requirement(r).name for r in _jetson_extra()} | {"numpy", "cuda-bindings"}
    files = sorted(CONSTRAINTS.glob("jetpack*.txt"))
    assert [f.name for f in files] == [
        "jetpack6.0.txt", "jetpack6.txt", "jetpack7.0.txt", "jetpack7.2.txt",
    ]  # fmt: skip
    for path in files:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        names = {Requirement(ln).name for ln in lines}
        assert names <= allowed, (path.name, names - allowed)
        assert "cuda-python" in names and "numpy" in names
