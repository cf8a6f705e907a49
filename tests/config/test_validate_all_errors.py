"""One ``validate-config`` call reports every problem of a file: all the schema errors (each at
its YAML line) and every file and cross-section check, even those of sections next to invalid
ones; ``run`` refuses the same file with the same list."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.validate_support import base_doc, issue_lines, run_refusal, validate_json
from tests.helpers.cli_util import run_cli

BROKEN = """\
device_id: cam-01
fleet: lab
profile: cpu
state_dir: state
models:
  - name: shapes-det
    bundle: {bundle}
    calib_dir: calib/missing
sources:
  - name: cam
    type: synthetic
    model: shapes-det
    fps_cap: 0
mqtt:
  enabled: false
metrics:
  enabled: true
  port: 70000
ota:
  enabled: true
  trust_dir: keys/missing
logging:
  level: loud
"""

#: (key, line in BROKEN, fragment of the message)
EXPECTED = [
    ("models.0.calib_dir", 8, "calibration folder"),
    ("sources.0.fps_cap", 13, "greater than 0"),
    ("metrics.port", 18, "less than or equal to 65535"),
    ("ota.enabled", 20, "MQTT is off"),
    ("ota.trust_dir", 21, "trust directory does not exist"),
    ("logging.level", 23, "'loud'"),
]


def _write(tmp_path: Path) -> Path:
    bundle = base_doc(tmp_path)["models"][0]["bundle"]
    path = tmp_path / "agent.yaml"
    path.write_text(BROKEN.format(bundle=bundle))
    return path


def test_every_problem_in_one_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path)
    code, document = validate_json(capsys, str(config))
    assert code == 2
    issues = document["files"][0]["issues"]
    found = [(i["key"], i["line"]) for i in issues]
    assert sorted(found) == sorted((key, line) for key, line, _ in EXPECTED), issues
    for issue in issues:
        assert issue["file"] == str(config)
        fragment = next(f for k, _l, f in EXPECTED if k == issue["key"])
        assert fragment in issue["message"], issue

    run_code, stderr = run_refusal(capsys, config)
    assert run_code == 2
    for line in issue_lines(document):
        assert line in stderr


def test_text_and_json_output_of_the_real_cli(tmp_path: Path) -> None:
    config = _write(tmp_path)
    text = run_cli("validate-config", str(config))
    assert text.returncode == 2 and "Traceback" not in text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == len(EXPECTED)
    by_line = sorted(EXPECTED, key=lambda e: e[1])
    for (key, line, _fragment), printed in zip(by_line, lines, strict=True):
        assert printed.startswith(f"{config}:{line}: {key}: ")
    assert f"{config}: {len(EXPECTED)} problems (agent)" in text.stderr


def test_json_document_for_several_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path)
    code, document = validate_json(capsys, str(config), str(tmp_path / "nope.yaml"))
    assert code == 2 and document["ok"] is False
    assert [f["ok"] for f in document["files"]] == [False, False]
    assert document["files"][1]["kind"] is None
    assert "file not found" in document["files"][1]["issues"][0]["message"]
