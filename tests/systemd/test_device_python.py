"""The device install keeps JetPack's numpy ABI: constraints from a (fake) system site-packages,
pip's resolver honouring them offline, the pyproject marker, and the cv2 import check.

The "system site-packages" here is a directory with a ``numpy-X.dist-info`` (what Ubuntu's
python3-numpy installs); the index is a directory of tiny fake wheels (numpy 1.26.4 and 2.1.0 and
an app that needs ``numpy>=1.24``), so pip resolves for real without a network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.assets import REPO, SCRIPTS

SCRIPT = SCRIPTS / "device_python.py"
JETSON_ENV = {"platform_release": "5.15.148-tegra"}  # JetPack 6 kernel release
HOST_ENV = {"platform_release": "6.1.0-18-amd64"}

pytestmark = pytest.mark.timeout(120)


def _dist_info(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    index.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": "",
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(index / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{info}/RECORD", record)


def _pyproject_numpy() -> list[str]:
    """The numpy requirement lines of pyproject.toml's [project] dependencies."""
    return re.findall(r'^\s*"(numpy[^"]*)",', (REPO / "pyproject.toml").read_text(), re.M)


def _constraints(*paths: Path, python: str = sys.executable) -> str:
    args = [python, str(SCRIPT), "constraints"]
    for path in paths:
        args += ["--path", str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


@pytest.mark.parametrize(
    ("system", "bound"), [("1.21.5", "numpy<2"), ("1.26.4", "numpy<2"), ("2.1.0", "numpy<3")]
)
def test_constraint_bounds_numpy_below_the_system_major(
    tmp_path: Path, system: str, bound: str
) -> None:
    _dist_info(tmp_path / "site", "numpy", system)
    _dist_info(tmp_path / "site", "pyyaml", "6.0")
    lines = [ln for ln in _constraints(tmp_path / "site").splitlines() if not ln.startswith("#")]
    assert lines == [bound]


def test_no_system_numpy_no_constraint(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    out = _constraints(tmp_path / "site")
    assert [ln for ln in out.splitlines() if ln and not ln.startswith("#")] == []


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index")
    _wheel(root, "numpy", "1.26.4")
    _wheel(root, "numpy", "2.1.0")
    # The app requires what pyproject.toml requires of numpy (markers included).
    _wheel(root, "jetsonapp", "0.1", tuple(_pyproject_numpy()))
    return root


def _resolve(tmp_path: Path, index: Path, system: str, constraints: str | None) -> dict[str, str]:
    """What pip would install into a venv whose system site-packages hold numpy ``system``."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    site = tmp_path / "system-site"
    _dist_info(site, "numpy", system)
    report = tmp_path / "report.json"
    args = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    args += ["--disable-pip-version-check", "-q", "install", "--dry-run", "--no-index"]
    args += ["--find-links", str(index), "--report", str(report), "jetsonapp"]
    if constraints is not None:
        (tmp_path / "constraints.txt").write_text(constraints)
        args += ["--constraint", str(tmp_path / "constraints.txt")]
    env = {**os.environ, "PYTHONPATH": str(site), "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in installs}


def test_pip_shadows_jetpack6_numpy_with_2x_without_the_constraint(
    tmp_path: Path, index: Path
) -> None:
    """The defect: system numpy 1.21.5 does not satisfy >=1.24, pip picks the newest (2.x)."""
    assert _resolve(tmp_path, index, "1.21.5", None)["numpy"] == "2.1.0"


def test_pip_honours_the_generated_constraint_on_jetpack6(tmp_path: Path, index: Path) -> None:
    _dist_info(tmp_path / "fake-system", "numpy", "1.21.5")
    constraints = _constraints(tmp_path / "fake-system")
    assert _resolve(tmp_path, index, "1.21.5", constraints)["numpy"] == "1.26.4"


def test_pip_keeps_jetpack7_system_numpy(tmp_path: Path, index: Path) -> None:
    _dist_info(tmp_path / "fake-system", "numpy", "1.26.4")
    got = _resolve(tmp_path, index, "1.26.4", _constraints(tmp_path / "fake-system"))
    assert "numpy" not in got and got["jetsonapp"] == "0.1"


def test_pyproject_caps_numpy_below_2_on_a_jetson_kernel_only() -> None:
    numpy = [Requirement(d) for d in _pyproject_numpy()]
    assert len(numpy) == 2

    def allows(version: str, env: dict[str, str]) -> bool:
        active = [r for r in numpy if r.marker is None or r.marker.evaluate(env)]
        return all(r.specifier.contains(version) for r in active)

    assert allows("1.26.4", JETSON_ENV) and not allows("2.1.0", JETSON_ENV)
    assert allows("2.1.0", HOST_ENV) and not allows("1.21.5", HOST_ENV)


def test_check_explains_a_cv2_that_does_not_import(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "cv2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('numpy.core.multiarray failed to import')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "check"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cv2" in proc.stderr and "numpy.core.multiarray failed" in proc.stderr
    assert "numpy<2" in proc.stderr and "edge-agent-constraints.txt" in proc.stderr


def test_check_passes_where_cv2_imports() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "cv2" in proc.stdout and "numpy" in proc.stdout
