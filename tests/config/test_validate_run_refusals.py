"""Every refusal ``edge-agent run`` makes on a configuration before it serves is one mutation of
a valid agent.yaml; for each, ``validate-config`` exits 2 naming it, and ``run`` refuses with
exit 2 and the very same lines (both call :mod:`agent.app.preflight`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.app.preflight import RunOverrides, load_run_config
from agent.core.errors import ConfigError
from tests.config.validate_support import (
    base_doc,
    copy_bundle,
    issue_lines,
    run_refusal,
    validate_json,
    write_doc,
)

Doc = dict[str, Any]
Mutation = Callable[[Path, Doc], None]


def _yaml_syntax(tmp: Path, doc: Doc) -> None:
    (tmp / "raw.yaml").write_text("device_id: cam-01\nfleet: [lab\n")


def _unknown_key(tmp: Path, doc: Doc) -> None:
    doc["daemon"]["stop_timeout"] = 2


def _unknown_profile(tmp: Path, doc: Doc) -> None:
    doc["profile"] = "orin-nano"


def _no_model_yaml(tmp: Path, doc: Doc) -> None:
    (tmp / "empty-bundle").mkdir()
    doc["models"][0]["bundle"] = "empty-bundle"


def _bad_model_yaml(tmp: Path, doc: Doc) -> None:
    bundle = copy_bundle(tmp)
    text = (bundle / "model.yaml").read_text().replace("task: detect", "task: segment")
    (bundle / "model.yaml").write_text(text)
    doc["models"][0]["bundle"] = str(bundle)


def _no_onnx(tmp: Path, doc: Doc) -> None:
    bundle = copy_bundle(tmp)
    (bundle / "model.onnx").unlink()
    doc["models"][0]["bundle"] = str(bundle)


def _no_labels(tmp: Path, doc: Doc) -> None:
    bundle = copy_bundle(tmp)
    (bundle / "labels.txt").unlink()
    doc["models"][0]["bundle"] = str(bundle)


def _no_calib_dir(tmp: Path, doc: Doc) -> None:
    doc["models"][0]["calib_dir"] = "calib/nowhere"


def _empty_calib_dir(tmp: Path, doc: Doc) -> None:
    (tmp / "calib-empty").mkdir()
    (tmp / "calib-empty" / "notes.txt").write_text("frames go here\n")
    doc["models"][0]["calib_dir"] = "calib-empty"


def _no_sources(tmp: Path, doc: Doc) -> None:
    doc["sources"] = []


def _no_tls_file(tmp: Path, doc: Doc) -> None:
    doc["mqtt"] = {"enabled": True, "url": "mqtts://127.0.0.1:1", "tls": {"ca_file": "ca.pem"}}


def _no_password_file(tmp: Path, doc: Doc) -> None:
    doc["mqtt"].update(username="cam-01", password_file="secrets/mqtt.pass")


def _unset_password_env(tmp: Path, doc: Doc) -> None:
    doc["mqtt"].update(username="cam-01", password_env="EDGE_AGENT_TEST_UNSET_PASSWORD")


def _ota_without_mqtt(tmp: Path, doc: Doc) -> None:
    doc["mqtt"]["enabled"] = False


def _no_trust_dir(tmp: Path, doc: Doc) -> None:
    doc["ota"]["trust_dir"] = "keys/missing"


def _trust_dir_without_keys(tmp: Path, doc: Doc) -> None:
    (tmp / "keys").mkdir()
    doc["ota"]["trust_dir"] = "keys"


def _trust_dir_bad_key(tmp: Path, doc: Doc) -> None:
    (tmp / "keys").mkdir()
    (tmp / "keys" / "fleet.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    doc["ota"]["trust_dir"] = "keys"


#: run's refusals: (mutation, the key it is reported at, a fragment of the message)
REFUSALS: dict[str, tuple[Mutation, str, str]] = {
    "yaml syntax": (_yaml_syntax, "(yaml)", "YAML syntax error"),
    "schema": (_unknown_key, "daemon.stop_timeout", "did you mean 'stop_timeout_s'"),
    "unknown profile": (_unknown_profile, "profile", "orin-nano-8gb"),
    "bundle without model.yaml": (_no_model_yaml, "models.0.bundle", "no model.yaml"),
    "invalid model.yaml": (_bad_model_yaml, "task", "'segment'"),
    "missing ONNX file": (_no_onnx, "models.0.bundle", "onnx file 'model.onnx' does not exist"),
    "missing labels file": (_no_labels, "models.0.bundle", "labels file 'labels.txt'"),
    "missing calib_dir": (_no_calib_dir, "models.0.calib_dir", "does not exist"),
    "calib_dir without frames": (_empty_calib_dir, "models.0.calib_dir", "no calibration frames"),
    "no sources": (_no_sources, "sources", "no sources to run"),
    "missing TLS file": (_no_tls_file, "mqtt.tls.ca_file", "does not exist"),
    "missing password file": (_no_password_file, "mqtt.password_file", "cannot read the secret"),
    "unset password variable": (_unset_password_env, "mqtt.password_env", "is not set"),
    "OTA without MQTT": (_ota_without_mqtt, "ota.enabled", "MQTT is off"),
    "missing trust dir": (_no_trust_dir, "ota.trust_dir", "trust directory does not exist"),
    "trust dir without keys": (_trust_dir_without_keys, "ota.trust_dir", "no public keys"),
    "unreadable trust key": (_trust_dir_bad_key, "ota.trust_dir", "cannot read an Ed25519"),
}


def test_the_base_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_doc(tmp_path / "agent.yaml", base_doc(tmp_path))
    code, document = validate_json(capsys, str(config))
    assert (code, issue_lines(document)) == (0, [])
    assert document["files"][0]["kind"] == "agent"


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_run_refusal_is_caught_by_validate_config_first(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ.pop("EDGE_AGENT_TEST_UNSET_PASSWORD", None)
    mutate, key, fragment = REFUSALS[name]
    doc = base_doc(tmp_path)
    mutate(tmp_path, doc)
    raw = tmp_path / "raw.yaml"
    config = raw if raw.exists() else write_doc(tmp_path / "agent.yaml", doc)

    code, document = validate_json(capsys, str(config))
    lines = issue_lines(document)
    assert code == 2 and document["ok"] is False
    assert any(f": {key}: " in line and fragment in line for line in lines), lines

    run_code, stderr = run_refusal(capsys, config)
    assert run_code == 2, stderr
    for line in lines:  # run refuses with exactly what validate-config reported
        assert line in stderr, (line, stderr)


def test_run_overrides_lift_the_rules_they_satisfy(tmp_path: Path) -> None:
    """``--mqtt-url`` turns MQTT on (OTA may then be on); ``--source`` gives the sources."""
    doc = base_doc(tmp_path)
    doc["mqtt"]["enabled"] = False
    doc["sources"] = []
    config = write_doc(tmp_path / "agent.yaml", doc)
    with pytest.raises(ConfigError) as caught:
        load_run_config(config)
    assert sorted(i.key for i in caught.value.issues) == ["ota.enabled", "sources"]
    overrides = RunOverrides(mqtt_url="mqtt://127.0.0.1:1", sources=True)
    cfg = load_run_config(config, overrides)
    assert cfg.ota.trust_dir == tmp_path / "trust"  # relative to the file, as run reads it
