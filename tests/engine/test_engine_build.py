"""End to end: bundled models → isolated build on the cpu profile → gate → engine cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.device import DeviceProfile
from agent.config.profiles.store import ProfileStore
from agent.core.errors import BuildFailed, CalibrationError
from agent.engine.build import steps as build_mod
from agent.engine.build.orchestrator import build_engine
from agent.engine.cache import MANIFEST, load_artifact, tmp_dirs
from tests.assets import CALIB
from tests.assets import CLS_BUNDLE as CLS
from tests.assets import DET_BUNDLE as DET


@pytest.fixture(scope="module")
def cpu() -> DeviceProfile:
    return ProfileStore().load("cpu")


def _with_build(profile: DeviceProfile, **changes: object) -> DeviceProfile:
    return profile.model_copy(update={"build": profile.build.model_copy(update=changes)})


def _entries(cache: Path) -> list[str]:
    if not cache.is_dir():
        return []
    return sorted(p.name for p in cache.iterdir() if (p / MANIFEST).is_file())


def _build(profile: DeviceProfile, bundle: Path, cache: Path, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("precision", "int8")
    kw.setdefault("calib_dir", CALIB / bundle.name)
    return build_engine(bundle, profile, cache_dir=cache, gate_seconds=0.3, **kw)


def test_classifier_int8_cache_hit_and_rebuild_after_corruption(
    cpu: DeviceProfile, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    events: list[str] = []
    first = _build(cpu, CLS, cache, progress=lambda s, f, m: events.append(s))
    art = first.artifact
    assert not first.cache_hit
    assert art.precision == "int8" and art.backend == "onnxruntime"
    assert {"prepare", "calibrate", "quantize", "build", "validate"} <= set(first.timings)
    assert first.peak_rss_mib is not None and first.peak_rss_mib > 20
    assert {"prepare", "calibrate", "quantize", "build", "validate", "commit"} <= set(events)
    manifest = art.manifest
    gate = manifest["validation"]["results"]["int8"]
    assert gate["metric"] == "top1_agreement" and gate["passed"]
    assert gate["latency_ms"]["p50"] > 0
    assert manifest["quantization"]["recipe"] == "onnxruntime"
    assert manifest["bundle"]["config"]["name"] == "shapes-cls"
    assert (art.dir / MANIFEST).is_file()
    load_artifact(art.dir)  # verifies hashes

    second = _build(cpu, CLS, cache)
    assert second.cache_hit and second.artifact.dir == art.dir

    model = art.dir / art.main_file
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x55
    model.write_bytes(bytes(data))
    third = _build(cpu, CLS, cache)
    assert not third.cache_hit
    assert third.artifact.dir == art.dir
    load_artifact(third.artifact.dir)
    assert _entries(cache) == [art.dir.name]
    assert tmp_dirs(cache) == []

    # another L4T release is another cache entry
    other = _build(cpu, CLS, cache, l4t_release="36.4.0")
    assert not other.cache_hit and other.artifact.dir != art.dir


def test_detector_auto_gates_int8_and_fp32(cpu: DeviceProfile, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    outcome = _build(cpu, DET, cache, precision="auto")
    report = outcome.report
    assert set(report.results) == {"int8", "fp32"}
    for result in report.results.values():
        assert result.metric == "box_agreement"
        assert {"ref_matched", "cand_matched"} <= set(result.details)
        assert result.latency is not None and result.latency.p50_ms > 0
    assert report.results["fp32"].passed and report.results["fp32"].value > 0.99
    assert report.chosen in ("int8", "fp32") and report.results[report.chosen].passed
    assert report.why.startswith("auto:")
    assert set(outcome.artifacts) == {"int8", "fp32"}
    assert len(_entries(cache)) == 2
    again = _build(cpu, DET, cache, precision="auto")
    assert again.cache_hit and again.report.chosen == report.chosen


def test_bad_calibration_dir_leaves_no_entry(cpu: DeviceProfile, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(CalibrationError, match="does not exist"):
        _build(cpu, CLS, cache, calib_dir=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="no calibration frames"):
        _build(cpu, CLS, cache, calib_dir=empty)
    assert _entries(cache) == []
    assert tmp_dirs(cache) == []


def test_failing_build_leaves_nothing_behind(cpu: DeviceProfile, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(BuildFailed, match="timeout"):
        _build(_with_build(cpu, build_timeout_s=0.05), CLS, cache, precision="fp32")
    assert _entries(cache) == []
    assert tmp_dirs(cache) == []


def test_out_of_memory_retries_once_with_half_the_workspace(
    cpu: DeviceProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = build_mod.build_isolated
    workspaces: list[int] = []

    def flaky(backend_name, request, **kw):  # type: ignore[no-untyped-def]
        workspaces.append(request.workspace_mib)
        if len(workspaces) == 1:
            raise BuildFailed(
                "out of memory", out_of_memory=True, workspace_mib=request.workspace_mib
            )
        return real(backend_name, request, **kw)

    monkeypatch.setattr(build_mod, "build_isolated", flaky)
    outcome = _build(cpu, CLS, tmp_path / "cache", precision="fp32")
    assert workspaces == [cpu.build.workspace_mib, cpu.build.workspace_mib // 2]
    assert outcome.artifact.manifest["build"]["workspace_mib"] == cpu.build.workspace_mib // 2
    assert any("half" in n or "retrying" in n for n in outcome.notes)

    def always_oom(backend_name, request, **kw):  # type: ignore[no-untyped-def]
        raise BuildFailed(
            f"ran out of memory with workspace {request.workspace_mib} MiB",
            out_of_memory=True,
            workspace_mib=request.workspace_mib,
        )

    monkeypatch.setattr(build_mod, "build_isolated", always_oom)
    with pytest.raises(BuildFailed, match="failed twice") as info:
        _build(cpu, CLS, tmp_path / "cache2", precision="fp32")
    assert info.value.out_of_memory
    assert _entries(tmp_path / "cache2") == [] and tmp_dirs(tmp_path / "cache2") == []
