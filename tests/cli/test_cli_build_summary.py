"""``edge-agent build`` output when INT8 cannot be made: ``auto`` serves fp32 and says why; an
explicit ``--precision int8`` fails with the error (in process, real ONNX Runtime builds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main as cli_main
from agent.core.errors import BuildFailed
from agent.engine.build import steps as steps_mod
from tests.assets import CLS_BUNDLE, CLS_CALIB


def _calibration_oom(*args: object, **kw: object) -> object:
    raise BuildFailed(
        "int8 quantization ran out of memory while calibrating",
        fix="raise build.build_memory_cap_mib",
        out_of_memory=True,
    )


def _build(tmp_path: Path, precision: str) -> list[str]:
    return [
        "build",
        str(CLS_BUNDLE),
        "--profile",
        "cpu",
        "--precision",
        precision,
        "--calib",
        str(CLS_CALIB),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--gate-seconds",
        "0.2",
    ]


def test_build_prints_the_skipped_int8_and_serves_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(steps_mod, "_quantize_isolated", _calibration_oom)
    assert cli_main(_build(tmp_path, "auto")) == 0
    out = capsys.readouterr().out
    assert "precision: fp32" in out
    why = next(line for line in out.splitlines() if line.startswith("why:"))
    assert "int8 skipped" in why and "ran out of memory while calibrating" in why
    assert any(
        line.startswith("note: int8 skipped") and "build.build_memory_cap_mib" in line
        for line in out.splitlines()
    )

    code = cli_main(_build(tmp_path, "int8"))
    captured = capsys.readouterr()
    assert code != 0
    assert "ran out of memory while calibrating" in captured.err
