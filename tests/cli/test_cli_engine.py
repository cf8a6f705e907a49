"""``edge-agent build | inspect | bench | infer`` as real subprocesses (``python -m agent``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.assets import CLS_BUNDLE as CLS
from tests.assets import CLS_CALIB as CALIB
from tests.assets import CLS_HELDOUT as HELDOUT
from tests.helpers.cli_util import run_cli


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("cli")
    proc = _run(
        "build",
        str(CLS),
        "--profile",
        "cpu",
        "--precision",
        "int8",
        "--calib",
        str(CALIB),
        "--gate-seconds",
        "0.3",
        "--cache-dir",
        str(work / "cache"),  # the default cache (H6's rules) is tested in tests/config
        "--json",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    # stdout: exactly one JSON document; the progress events are JSON lines on stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return work, {"events": events, "result": json.loads(proc.stdout)}


def test_build_emits_json_progress_and_summary(built: tuple[Path, dict]) -> None:
    work, out = built
    events, result = out["events"], out["result"]
    assert events and all(e["event"] == "progress" for e in events)
    assert {"prepare", "quantize", "build", "validate"} <= {e["stage"] for e in events}
    assert result["event"] == "result"
    assert result["precision"] == "int8" and not result["cache_hit"]
    art = Path(result["artifact"])
    assert art.is_relative_to(work / "cache")
    assert result["report"]["results"]["int8"]["passed"]


def test_inspect_bench_infer(built: tuple[Path, dict], tmp_path: Path) -> None:
    work, out = built
    art = out["result"]["artifact"]

    proc = _run("inspect", art, "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["summary"]["by_precision"].get("int8", 0) > 0
    assert any(layer["op_type"].startswith("QLinear") for layer in doc["layers"])

    proc = _run(
        "bench", art, "--seconds", "0.3", "--streams", "2", "--per-layer", "--json", cwd=work
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["inferences"] > 0 and doc["throughput"]["images_per_s"] > 0
    assert doc["latency_ms"]["p99"] >= doc["latency_ms"]["p50"] > 0
    assert doc["layers"] and doc["layers"][0]["percent"] > 0

    labels = json.loads((HELDOUT / "labels.json").read_text())
    names = sorted(labels)[:4]
    tensor = tmp_path / "t.npy"
    np.save(tensor, np.zeros((1, 3, 64, 64), np.float32))
    outdir = tmp_path / "out"
    proc = _run(
        "infer",
        art,
        *(str(HELDOUT / n) for n in names),
        str(tensor),
        "--json",
        "--out",
        str(outdir),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["results"]) == 5
    agree = sum(
        r["top_k"][0]["class_id"] == labels[n]
        for r, n in zip(doc["results"][:4], names, strict=True)
    )
    assert agree >= 3
    assert (outdir / f"{Path(names[0]).stem}.logits.npy").is_file()
    assert (outdir / "results.json").is_file()


def test_errors_name_the_fix(built: tuple[Path, dict], tmp_path: Path) -> None:
    work, _ = built
    proc = _run("inspect", str(tmp_path / "nope"), cwd=work)
    assert proc.returncode == 1
    assert "edge-agent build" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(
        "build",
        str(CLS),
        "--profile",
        "cpu",
        "--calib",
        str(tmp_path / "none"),
        "--cache-dir",
        str(tmp_path / "c"),
        cwd=work,
    )
    assert proc.returncode == 2
    assert "calibration" in proc.stderr and "fix:" in proc.stderr
