"""validate-config: every bad-input case gives one located line per problem and exit code 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.config.load import validate_file
from agent.config.yaml import load_model_file, parse_yaml
from agent.core.errors import ConfigError
from tests.assets import DET_BUNDLE, PROFILES_DIR, REPO
from tests.helpers.cli_util import run_cli

PROFILES = sorted(PROFILES_DIR.glob("*.yaml"))

GOOD_AGENT = """\
device_id: cam-01
fleet: warehouse
profile: cpu
state_dir: /tmp/edge-agent/state
cache_dir: /tmp/edge-agent/cache
models:
  - name: shapes-det
    bundle: {bundle}
    precision: auto
sources:
  - name: dock
    type: file
    uri: sample.mp4
    model: shapes-det
mqtt:
  enabled: false
  url: mqtt://127.0.0.1:1883
"""


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


@pytest.fixture()
def agent_yaml(tmp_path: Path) -> Path:
    bundle = DET_BUNDLE
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD_AGENT.format(bundle=bundle))
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_profile_validates() -> None:
    assert len(PROFILES) == 9  # six Orin, two Thor, cpu
    for path in PROFILES:
        profile = load_model_file(path, DeviceProfile)
        assert profile.name == path.stem


def test_cli_accepts_all_profiles() -> None:
    result = run_cli("validate-config", *(str(p) for p in PROFILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok (profile)") == 9


def test_good_agent_config(agent_yaml: Path) -> None:
    kind, issues = validate_file(agent_yaml)
    assert kind == "agent"
    assert issues == []
    cfg = load_model_file(agent_yaml, AgentConfig)
    assert cfg.sources[0].model == "shapes-det"


def test_unknown_key_suggests_nearest(tmp_path: Path, agent_yaml: Path) -> None:
    text = agent_yaml.read_text().replace("  url: mqtt", "  ur1: mqtt")
    path = write(tmp_path, "typo.yaml", text)
    _, issues = validate_file(path)
    assert len(issues) == 1
    assert issues[0].line == line_of(text, "ur1:")
    assert issues[0].key == "mqtt.ur1"
    assert "did you mean 'url'" in issues[0].message


def test_wrong_type_names_the_value(tmp_path: Path, agent_yaml: Path) -> None:
    text = agent_yaml.read_text().replace("enabled: false", "enabled: sometimes")
    path = write(tmp_path, "type.yaml", text)
    _, issues = validate_file(path)
    assert [i.key for i in issues] == ["mqtt.enabled"]
    assert issues[0].line == line_of(text, "enabled: sometimes")
    assert "'sometimes'" in issues[0].message


def test_min_greater_than_max_shape(tmp_path: Path) -> None:
    source = (REPO / "device_profiles" / "orin-nano-8gb.yaml").read_text()
    doc = parse_yaml(source, "x")
    batch = doc.data["shapes"]["batch"]
    broken = source.splitlines()
    batch_line = doc.lines[("shapes", "batch", "min")]
    broken[batch_line - 1] = broken[batch_line - 1].replace(
        f"min: {batch['min']}", f"min: {batch['max'] + 5}"
    )
    path = tmp_path / "device_profiles" / "orin-nano-8gb.yaml"
    path.parent.mkdir()
    path.write_text("\n".join(broken) + "\n")
    kind, issues = validate_file(path)
    assert kind == "profile"
    assert len(issues) == 1
    assert issues[0].key == "shapes.batch"
    assert issues[0].line == doc.lines[("shapes", "batch")]
    assert "min <= opt <= max" in issues[0].message


def test_cross_field_rule_points_at_the_key(tmp_path: Path) -> None:
    source = (REPO / "device_profiles" / "orin-nano-4gb.yaml").read_text()
    doc = parse_yaml(source, "x")
    line = doc.lines[("build", "workspace_mib")]
    lines = source.splitlines()
    old = doc.data["build"]["workspace_mib"]
    lines[line - 1] = lines[line - 1].replace(str(old), "3000")
    path = write(tmp_path, "orin-nano-4gb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_model_file(path, DeviceProfile)
    keys = {(i.key, i.line) for i in info.value.issues}
    assert ("build.workspace_mib", line) in keys


def test_unknown_profile_name(tmp_path: Path, agent_yaml: Path) -> None:
    text = agent_yaml.read_text().replace("profile: cpu", "profile: orin-nano")
    path = write(tmp_path, "prof.yaml", text)
    _, issues = validate_file(path)
    assert len(issues) == 1
    assert issues[0].key == "profile"
    assert issues[0].line == line_of(text, "profile: orin-nano")
    assert "orin-nano-8gb" in issues[0].message


def test_missing_bundle_is_located(tmp_path: Path, agent_yaml: Path) -> None:
    text = GOOD_AGENT.format(bundle="does/not/exist")
    path = write(tmp_path, "bundle.yaml", text)
    _, issues = validate_file(path)
    assert [(i.key, i.line) for i in issues] == [("models.0.bundle", line_of(text, "bundle:"))]


def test_source_referring_to_unknown_model(tmp_path: Path, agent_yaml: Path) -> None:
    text = agent_yaml.read_text().replace("    model: shapes-det", "    model: yolo")
    path = write(tmp_path, "ref.yaml", text)
    _, issues = validate_file(path)
    assert [(i.key, i.line) for i in issues] == [("sources.0.model", line_of(text, "model: yolo"))]


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    text = "device_id: a\nfleet: [b\nmodels: []\n"
    path = write(tmp_path, "syntax.yaml", text)
    _, issues = validate_file(path)
    assert len(issues) == 1
    assert issues[0].key == "(yaml)"
    assert issues[0].line in (2, 3)
    assert "YAML syntax error" in issues[0].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.yaml", "device_id: a\n")
    path.chmod(0)
    _, issues = validate_file(path)
    assert issues[0].key == "(file)"
    assert "cannot read" in issues[0].message


def test_directory_and_missing_file_are_unreadable(tmp_path: Path) -> None:
    _, issues = validate_file(tmp_path)
    assert issues[0].key == "(file)"
    assert "cannot read" in issues[0].message
    _, issues = validate_file(tmp_path / "nope.yaml")
    assert "file not found" in issues[0].message
    binary = tmp_path / "engine.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _, issues = validate_file(binary)
    assert issues[0].key == "(file)"
    assert "UTF-8" in issues[0].message


def test_cli_exit_codes_and_format(tmp_path: Path, agent_yaml: Path) -> None:
    bad = write(tmp_path, "bad.yaml", agent_yaml.read_text().replace("fleet:", "flet:"))
    result = run_cli("validate-config", str(agent_yaml), str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problem_lines = [ln for ln in result.stdout.splitlines() if ln.startswith(str(bad))]
    # The unknown key and the now-missing required key are both reported, each on its own line.
    assert len(problem_lines) == 2
    unknown = next(ln for ln in problem_lines if ": flet: " in ln)
    assert unknown.startswith(f"{bad}:{line_of(bad.read_text(), 'flet:')}: flet: ")
    assert "did you mean 'fleet'" in unknown
    assert any(ln.startswith(f"{bad}:1: fleet: required key is missing") for ln in problem_lines)
    assert main(["validate-config", "-q", str(agent_yaml)]) == 0


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    _, issues = validate_file(write(tmp_path, "empty.yaml", ""))
    assert "empty" in issues[0].message
    _, issues = validate_file(write(tmp_path, "list.yaml", "- a\n- b\n"))
    assert "mapping" in issues[0].message
