"""TensorRT releases of JetPack 6 and 7 (10.3, 10.13, 10.16, 11.4.0, 11.4.1) on the boards: the
DLA decision (:mod:`agent.backends.tensorrt.dla`), the build plan on each release's fake (flags and
DLA decision), a real build through the fake, and the engine's early refusal of a profile that
asks for a DLA its TensorRT and board do not have."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.backends.base import TargetBoard
from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import plan as trt_plan
from agent.backends.tensorrt.dla import decide_dla, version_tuple
from agent.config.build import DlaConfig
from agent.config.device import DeviceProfile
from agent.config.profiles.store import ProfileStore
from agent.core.errors import BuildFailed
from agent.engine.build.context import check_dla, target_board
from tests.fakes.tensorrt import (
    EXPECTED_FLAGS,
    JETPACK7_GENERATIONS,
    build_request,
    make_fake_tensorrt,
    onnx_fp16_model,
    onnx_relu_model,
)

PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"

# Boards as their profiles describe them; "agx-thor" as helper H1 adds it to the Family literal
# (no DLA: "Not supported: NVIDIA Jetson Thor, which has no DLA", TensorRT 11.4.1 docs).
AGX_ORIN = TargetBoard("agx-orin-64gb", "agx-orin", 2)
ORIN_NX = TargetBoard("orin-nx-16gb", "orin-nx", 2)
ORIN_NX_8 = TargetBoard("orin-nx-8gb", "orin-nx", 1)
ORIN_NANO = TargetBoard("orin-nano-8gb", "orin-nano", 0)
THOR = TargetBoard("agx-thor-t5000", "agx-thor", 0)


def _on(board: TargetBoard, jetpack: str | None) -> TargetBoard:
    return TargetBoard(board.profile, board.family, board.dla_cores, jetpack)


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("trt", "board", "jetpack", "allowed"),
    [
        ("8.5.2.2", ORIN_NX, "5.1.2", True),  # JetPack 5
        ("10.3.0.30", AGX_ORIN, "6.2", True),  # JetPack 6
        ("10.3.0.30", ORIN_NX, "6.2", True),
        ("10.7.0.23", AGX_ORIN, "6.2", True),  # the last 10.x with DLA
        ("10.8.0.43", AGX_ORIN, "6.2", False),
        ("10.13.3.9", AGX_ORIN, "7.0", False),
        ("10.16.1.11", AGX_ORIN, "7.2", False),  # JetPack 7.2 on Orin: no DLA
        ("11.0.0.11", AGX_ORIN, "7.2", False),
        ("11.4.0", AGX_ORIN, "7.2.2", False),  # 11.4.0: DLA on Windows on ARM only
        ("11.4.1", AGX_ORIN, "7.2.2", True),  # restored, AGX Orin, JetPack 7.2.2+
        ("11.4.1.7", AGX_ORIN, "7.3", True),
        ("11.4.1", AGX_ORIN, "7.1", False),  # needs 7.2.2
        ("11.4.1", AGX_ORIN, "6.2", False),
        ("11.4.1", AGX_ORIN, "7.2.1", True),  # 11.4.1 installed there: a 7.2.x the table misplaced
        ("11.4.1", AGX_ORIN, None, True),  # JetPack not detected: TensorRT's own support
        ("11.4.1", ORIN_NX, "7.2.2", False),  # AGX Orin only
        ("10.3.0.30", ORIN_NANO, "6.2", False),
        ("10.13.3.9", THOR, "7.0", False),
        ("10.16.1.11", THOR, "7.2", False),
        ("11.4.1", THOR, "7.2.2", False),
    ],
)
def test_dla_decision_per_release_and_board(
    trt: str, board: TargetBoard, jetpack: str | None, allowed: bool
) -> None:
    decision = decide_dla(trt, _on(board, jetpack), 0)
    assert decision.requested and decision.allowed is allowed, decision.reason
    if allowed:
        assert decision.fix is None
        return
    assert decision.fix and "build.dla.enabled: false" in decision.fix
    if board.dla_cores == 0:  # the board: no TensorRT brings a DLA to it
        assert board.family in decision.reason and "JetPack 7.2.2" not in decision.fix
    elif board is AGX_ORIN:  # the release: name it, and the way to a DLA on this board
        assert f"TensorRT {trt}" in decision.reason and "JetPack 7.2.2" in decision.fix


def test_dla_decision_names_thor_and_the_missing_core() -> None:
    thor = decide_dla("11.4.1", _on(THOR, "7.2.2"), 0)
    assert "Jetson Thor has no DLA" in thor.reason and "agx-thor-t5000" in thor.reason
    core = decide_dla("10.3.0.30", _on(ORIN_NX_8, "6.2"), 1)
    assert not core.allowed and "1 DLA core(s)" in core.reason
    assert core.fix and "build.dla.core below 1" in core.fix
    nx = decide_dla("11.4.1", _on(ORIN_NX, "7.2.2"), 0)
    assert "AGX Orin only" in nx.reason and nx.fix and "TensorRT 10.7 or older" in nx.fix


def test_dla_decision_without_a_board_or_a_request() -> None:
    assert not decide_dla("10.16.1.11", None, None).requested
    assert decide_dla("10.3.0.30", None, 0).allowed
    assert not decide_dla("10.16.1.11", None, 0).allowed  # no Jetson board has it there
    unknown = decide_dla("11.4.1", None, 0)
    assert unknown.allowed and "board is not known" in unknown.reason
    odd = decide_dla("unknown", _on(AGX_ORIN, None), 0)
    assert odd.allowed and "not a release number" in odd.reason
    assert not decide_dla("10.3.0.30", AGX_ORIN, -1).allowed
    assert version_tuple("10.16.1.11") == (10, 16, 1, 11) and version_tuple("r36") is None


# --------------------------------------------------------------------------- plan on each fake

#: AGX Orin, per release: the JetPack it runs there, and whether DLA is allowed
_AGX_ORIN_RUNS = {
    "10.3": ("6.2", True),
    "10.13": ("7.0", False),
    "10.16": ("7.2", False),
    "11.4.0": ("7.2.2", False),
    "11.4.1": ("7.2.2", True),
}


@pytest.mark.parametrize("gen", ["10.3", *JETPACK7_GENERATIONS])
def test_build_plan_on_each_release_shows_flags_and_dla_decision(tmp_path: Path, gen: str) -> None:
    caps = trt_plan.detect_capabilities(make_fake_tensorrt(gen))
    jetpack, dla_ok = _AGX_ORIN_RUNS[gen]
    board = _on(AGX_ORIN, jetpack)
    gpu = trt_plan.plan_build(build_request(tmp_path, board=board), caps)
    network_flags, int8_flags, _ = EXPECTED_FLAGS[gen]
    assert (gpu.network_flags, gpu.builder_flags) == (network_flags, int8_flags)
    assert gpu.to_json()["dla"] == {
        "requested": False,
        "allowed": False,
        "reason": "DLA not requested (build.dla.enabled: false)",
        "fix": None,
    }
    request = build_request(tmp_path, board=board, dla_core=0)
    if dla_ok:
        plan = trt_plan.plan_build(request, caps)
        assert plan.device_type == "DLA" and "GPU_FALLBACK" in plan.builder_flags
        assert plan.to_json()["dla"]["allowed"] is True
        return
    with pytest.raises(BuildFailed) as err:
        trt_plan.plan_build(request, caps)
    assert f"TensorRT {caps.version}" in str(err.value) and "agx-orin" in str(err.value)
    assert err.value.fix and "JetPack 7.2.2" in err.value.fix


@pytest.mark.parametrize("gen", ["10.3", *JETPACK7_GENERATIONS])
@pytest.mark.parametrize("board", [THOR, ORIN_NANO], ids=["thor", "orin-nano"])
def test_build_plan_refuses_dla_on_boards_without_one(
    tmp_path: Path, gen: str, board: TargetBoard
) -> None:
    caps = trt_plan.detect_capabilities(make_fake_tensorrt(gen))
    with pytest.raises(BuildFailed, match="has no DLA") as err:
        trt_plan.plan_build(build_request(tmp_path, board=board, dla_core=0), caps)
    assert err.value.fix and "build.dla.enabled: false" in err.value.fix


# --------------------------------------------------------------------------- builds on the fakes


def _install(gen: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = make_fake_tensorrt(gen)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.mark.parametrize("gen", JETPACK7_GENERATIONS)
def test_gpu_build_on_each_jetpack7_release(
    tmp_path: Path, gen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _install(gen, monkeypatch)
    onnx_relu_model(tmp_path / "model.onnx")
    board = _on(THOR, "7.2")
    result = trt_backend.BACKEND.build(build_request(tmp_path, board=board))
    network_flags, int8_flags, _ = EXPECTED_FLAGS[gen]
    assert fake._fake.named("create_network") == [("create_network", network_flags)]
    assert [f for _, f in fake._fake.named("set_flag")] == list(int8_flags)
    assert result.info["tensorrt_version"] == fake.__version__
    assert result.info["plan"]["dla"]["requested"] is False
    assert result.info["board"] == board.to_json()
    assert ("fp16" in trt_backend.BACKEND.precisions) is gen.startswith("10.")


def test_dla_build_on_agx_orin_with_11_4_1_and_jetpack_7_2_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _install("11.4.1", monkeypatch)
    onnx_fp16_model(tmp_path / "model.onnx")  # strongly typed DLA: the graph carries FP16
    request = build_request(tmp_path, board=_on(AGX_ORIN, "7.2.2"), dla_core=1)
    result = trt_backend.BACKEND.build(request)
    rec = fake._fake
    assert ("default_device_type", "DLA") in rec.calls and ("DLA_core", 1) in rec.calls
    assert [f for _, f in rec.named("set_flag")] == ["GPU_FALLBACK"]
    assert result.info["plan"]["dla"]["allowed"] is True


@pytest.mark.parametrize("gen", ["10.13", "10.16", "11.4.0"])
def test_dla_build_is_refused_before_tensorrt_is_touched(
    tmp_path: Path, gen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _install(gen, monkeypatch)
    onnx_relu_model(tmp_path / "model.onnx")
    request = build_request(tmp_path, board=_on(AGX_ORIN, "7.2"), dla_core=0)
    with pytest.raises(
        BuildFailed, match=re.escape(f"TensorRT {fake.__version__} has no DLA support")
    ):
        trt_backend.BACKEND.build(request)
    assert not fake._fake.named("Builder")


def test_dla_build_stops_when_tensorrt_sees_no_dla_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _install("10.3", monkeypatch)
    fake._fake.dla_cores = 0  # a TensorRT that offers no DLA on this device
    onnx_relu_model(tmp_path / "model.onnx")
    request = build_request(tmp_path, board=_on(AGX_ORIN, "6.2"), dla_core=0)
    with pytest.raises(BuildFailed, match=r"TensorRT 10\.3\.0\.30 sees 0 DLA core\(s\)"):
        trt_backend.BACKEND.build(request)
    assert fake._fake.named("num_DLA_cores") and not fake._fake.named("create_network")


# --------------------------------------------------------------------------- the engine's check


def _with_dla(name: str) -> DeviceProfile:
    profile = ProfileStore(PROFILES).load(name)
    build = profile.build.model_copy(update={"dla": DlaConfig(enabled=True, core=0)})
    return profile.model_copy(update={"build": build})


def test_engine_refuses_a_dla_profile_before_any_work() -> None:
    profile = _with_dla("agx-orin-64gb")
    assert target_board(profile, "36.4.3") == TargetBoard("agx-orin-64gb", "agx-orin", 2, "6.2")
    check_dla(profile, "10.3.0.30", "36.4.3")  # JetPack 6.2, TensorRT 10.3: DLA works
    with pytest.raises(BuildFailed) as err:
        check_dla(profile, "10.16.1.11", "39.2.0")  # JetPack 7.2
    text = str(err.value)
    assert "profile agx-orin-64gb, build.dla.enabled" in text and "TensorRT 10.16.1.11" in text
    assert err.value.fix and "JetPack 7.2.2" in err.value.fix
    with pytest.raises(BuildFailed, match=r"JetPack 7\.2\.2 or later"):
        check_dla(profile, "11.4.1", "38.4.0")  # JetPack 7.1
    check_dla(profile, "11.4.1", "39.2.0")  # a 7.2.x: 11.4.1 is only shipped on 7.2.2+
    check_dla(profile, "11.4.1", None)  # JetPack unknown: the builder's core count decides
    check_dla(ProfileStore(PROFILES).load("agx-orin-64gb"), "10.16.1.11", "39.2.0")  # no DLA
