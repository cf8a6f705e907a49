"""``auto`` always serves (a failing INT8 is reported and skipped) and the gate-driven accuracy
search (a layer with an extreme activation range kept in float), with real ONNX Runtime builds
on the cpu profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.cli.main import main as cli_main
from agent.config.device import DeviceProfile
from agent.core.errors import BuildFailed, ValidationFailed
from agent.engine.build import steps as steps_mod
from agent.engine.build.context import SearchLimits
from agent.engine.build.orchestrator import build_engine
from agent.engine.build.outcome import BuildOutcome
from agent.engine.cache import MANIFEST, tmp_dirs
from tests.assets import CLS_BUNDLE, CLS_CALIB

ENTROPY_ONLY = SearchLimits(methods=("entropy",))


def _entries(cache: Path) -> list[str]:
    if not cache.is_dir():
        return []
    return sorted(p.name for p in cache.iterdir() if (p / MANIFEST).is_file())


def _build(bundle: Path, profile: DeviceProfile, cache: Path, **kw: object) -> BuildOutcome:
    return build_engine(
        bundle,
        profile,
        calib_dir=CLS_CALIB,
        cache_dir=cache,
        gate_seconds=0.2,
        gate_iterations=20,
        **kw,  # type: ignore[arg-type]
    )


def _oom(*args: object, **kw: object) -> object:
    raise BuildFailed(
        "int8 quantization ran out of memory under a 2048 MiB cap",
        fix="raise build.build_memory_cap_mib",
        out_of_memory=True,
    )


# ---------------------------------------------------------------------------- auto always serves


def test_auto_serves_fp32_when_int8_cannot_be_made(
    cpu_profile: DeviceProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steps_mod, "_quantize_isolated", _oom)
    cache = tmp_path / "cache"
    outcome = _build(CLS_BUNDLE, cpu_profile, cache, precision="auto")
    assert outcome.artifact.precision == "fp32"
    assert set(outcome.artifacts) == {"fp32"} and set(outcome.report.results) == {"fp32"}
    assert "int8 skipped" in outcome.report.why and "ran out of memory" in outcome.report.why
    assert any("int8 skipped" in n and "2048 MiB" in n for n in outcome.notes)
    manifest = outcome.artifact.manifest
    assert "int8 skipped" in manifest["validation"]["why"]
    assert _entries(cache) == [outcome.artifact.dir.name] and tmp_dirs(cache) == []

    with pytest.raises(BuildFailed, match="ran out of memory") as info:
        _build(CLS_BUNDLE, cpu_profile, tmp_path / "explicit", precision="int8")
    assert info.value.out_of_memory
    assert _entries(tmp_path / "explicit") == []


def test_auto_names_every_reason_when_every_candidate_fails(
    cpu_profile: DeviceProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashed(backend_name: str, request: object, **kw: object) -> object:
        raise BuildFailed("onnxruntime fp32 build process exited with code -11", fix="check")

    monkeypatch.setattr(steps_mod, "_quantize_isolated", _oom)
    monkeypatch.setattr(steps_mod, "build_isolated", crashed)
    cache = tmp_path / "cache"
    with pytest.raises(BuildFailed, match="no precision could be built") as info:
        _build(CLS_BUNDLE, cpu_profile, cache, precision="auto")
    message = info.value.message
    assert "int8: build failed" in message and "ran out of memory" in message
    assert "fp32: build failed" in message and "code -11" in message
    assert _entries(cache) == [] and tmp_dirs(cache) == []


# ---------------------------------------------------------------------------- accuracy search


def spike_model(channels: int = 32, spike: float = 200.0) -> onnx.ModelProto:
    """conv1-relu1-spike-relu2-head: ``spike``'s channel 0 carries a constant ``spike`` while
    the output rides on the other, small channels. One per-tensor INT8 scale for relu2's
    output wipes them out; keeping relu2 (and its consumer ``head``) in float restores it."""
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []

    def w(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    w1 = rng.standard_normal((channels, 3, 3, 3)) * 0.3
    w2 = rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)
    b2 = np.zeros(channels)
    b2[0] = spike
    w3 = rng.standard_normal((4, channels, 1, 1)) * 0.3
    w3[:, 0, 0, 0] = 0.01
    nodes = [
        helper.make_node(
            "Conv",
            ["images", w("w1", w1), "b1"],
            ["c1"],
            name="conv1",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", w("w2", w2), w("b2", b2)], ["c2"], name="spike"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", w("w3", w3), w("b3", np.zeros(4))], ["out"], name="head"),
    ]
    w("b1", np.zeros(channels))
    graph = helper.make_graph(
        nodes,
        "spike",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def spike_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("spike") / "spike"
    directory.mkdir()
    onnx.save(spike_model(), directory / "model.onnx")
    (directory / "model.yaml").write_text(
        "name: spike\nversion: 1\ntask: raw\n"
        "input: {name: images, size: [32, 32], resize: stretch}\n"
        "output: {decode: raw}\ntolerance: {relative_error_max: 0.03}\n"
    )
    return directory


def test_search_keeps_the_extreme_layer_in_float(
    cpu_profile: DeviceProfile, spike_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    outcome = _build(spike_bundle, cpu_profile, cache, precision="int8", search=ENTROPY_ONLY)
    result = outcome.report.results["int8"]
    assert outcome.artifact.precision == "int8" and result.passed
    q = outcome.artifact.manifest["quantization"]
    search = q["search"]
    first, chosen = search["attempts"][0], search["attempts"][search["chosen"]]
    assert search["ran"] and search["passed"] and search["chosen"] >= 1
    assert first["rank"] == 0 and not first["passed"] and first["value"] > 0.03
    assert chosen["passed"] and chosen["method"] == "entropy" and chosen["rank"] >= 1
    assert chosen["p50_ms"] > 0 and chosen["metric"] == "relative_error"
    assert "relu2" in chosen["search_float"]
    reasons = {f["node"]: f["reason"] for f in q["float_layers"]}
    assert reasons["relu2"].startswith("gate-driven search: rank ")
    assert "consumer" in reasons["head"]
    assert "relu2" in q["excluded_nodes"] and q["method"] == "entropy"
    assert any("accuracy search: attempt" in n for n in outcome.notes)
    assert tmp_dirs(cache) == []

    # inspect shows the float layers, the attempts and the gate
    assert cli_main(["inspect", str(outcome.artifact.dir)]) == 0
    text = capsys.readouterr().out
    assert "int8 calibration method: entropy" in text
    assert "gate-driven search: rank" in text and "relu2" in text
    assert "accuracy search:" in text and "relative_error" in text

    again = _build(spike_bundle, cpu_profile, cache, precision="int8", search=ENTROPY_ONLY)
    assert again.cache_hit and again.artifact.dir == outcome.artifact.dir


def test_without_the_search_the_same_int8_fails(
    cpu_profile: DeviceProfile, spike_bundle: Path, tmp_path: Path
) -> None:
    off = SearchLimits(enabled=False)
    with pytest.raises(ValidationFailed, match="relative_error"):
        _build(spike_bundle, cpu_profile, tmp_path / "cache", precision="int8", search=off)
    outcome = _build(spike_bundle, cpu_profile, tmp_path / "cache", precision="auto", search=off)
    assert outcome.artifact.precision == "fp32"
    q = outcome.artifacts["int8"].manifest["quantization"]
    assert q["search"] == {"ran": False, "why": "the accuracy search is disabled"}
