"""A valid agent.yaml in a temporary directory (bundle, calibration frames, OTA trust key, MQTT
on), and the CLI calls the validate-config tests compare: ``validate-config --json`` and
``run``, through the real ``main()``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from tests.assets import DET_BUNDLE, DET_CALIB


def write_public_key(directory: Path, name: str = "fleet.pub") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = directory / name
    path.write_bytes(pem)
    return path


def copy_bundle(tmp: Path) -> Path:
    """A private copy of the detector bundle (model.yaml, ONNX, labels) to break."""
    bundle = tmp / "bundle"
    bundle.mkdir()
    for name in ("model.yaml", "model.onnx", "labels.txt"):
        shutil.copy2(DET_BUNDLE / name, bundle / name)
    return bundle


def base_doc(tmp: Path) -> dict[str, Any]:
    """A configuration ``run`` accepts: every check passes (relative paths: to the file)."""
    write_public_key(tmp / "trust")
    return {
        "device_id": "cam-01",
        "fleet": "lab",
        "profile": "cpu",
        "state_dir": "state",
        "cache_dir": "cache",
        "models": [{"name": "shapes-det", "bundle": str(DET_BUNDLE), "calib_dir": str(DET_CALIB)}],
        "sources": [{"name": "cam", "type": "synthetic", "model": "shapes-det"}],
        "mqtt": {"enabled": True, "url": "mqtt://127.0.0.1:1"},
        "ota": {"enabled": True, "trust_dir": "trust"},
        "daemon": {"stop_timeout_s": 2},
    }


def write_doc(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def validate_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """``edge-agent validate-config --json ARGS``: (exit code, the JSON document)."""
    capsys.readouterr()
    code = main(["validate-config", "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def run_refusal(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, str]:
    """``edge-agent run --config CONFIG``: (exit code, stderr). Only called on configurations
    it refuses, so it returns before any engine is built."""
    capsys.readouterr()
    code = main(["run", "--config", str(config), "--no-monitor", "--duration", "0.1", *extra])
    return code, capsys.readouterr().err


def issue_lines(document: dict[str, Any]) -> list[str]:
    """``file:line: key: message`` of every issue of every file, as the text output prints."""
    return [
        f"{i['file']}:{i['line']}: {i['key']}: {i['message']}"
        for f in document["files"]
        for i in f["issues"]
    ]
