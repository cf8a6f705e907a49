"""A 640x640 dense-output model (DBNet-like) quantizes in an isolated child under a memory
cap that fetching every activation of the probe's frames at once would blow through."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.config.device import DeviceProfile
from agent.engine.build.steps import quantize_target
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.isolate.launch import run_isolated
from agent.engine.prepare import prepare
from agent.engine.quantize.entry import QuantizedModel
from agent.engine.quantize.memory import activation_bytes
from tests.helpers.onnx_models import make_bundle

_CAP_MIB = 640
_SIZE = 640


def dbnet_like() -> onnx.ModelProto:
    """Backbone down to 1/4, an FPN-style upsample + concat, and a full-resolution
    probability map: every activation is large, the output is dense."""
    rng = np.random.default_rng(5)
    inits: list[onnx.TensorProto] = []

    def conv(name: str, src: str, cin: int, cout: int, stride: int = 1) -> onnx.NodeProto:
        w = (rng.standard_normal((cout, cin, 3, 3)) * (1.5 / np.sqrt(cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b"))
        return helper.make_node(
            "Conv", [src, f"{name}.w", f"{name}.b"], [name], name=name, pads=[1] * 4,
            strides=[stride, stride],
        )  # fmt: skip

    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "x2"))
    nodes = [
        conv("stem", "images", 3, 16, 2),
        helper.make_node("Relu", ["stem"], ["stem_r"], name="stem_act"),
        conv("c2", "stem_r", 16, 16),
        helper.make_node("Relu", ["c2"], ["c2_r"], name="c2_act"),
        conv("c3", "c2_r", 16, 32, 2),
        helper.make_node("Relu", ["c3"], ["c3_r"], name="c3_act"),
        helper.make_node("Resize", ["c3_r", "", "x2"], ["up1"], name="up1", mode="nearest"),
        helper.make_node("Concat", ["up1", "c2_r"], ["fpn"], name="fpn", axis=1),
        conv("c4", "fpn", 48, 16),
        helper.make_node("Relu", ["c4"], ["c4_r"], name="c4_act"),
        helper.make_node("Resize", ["c4_r", "", "x2"], ["up2"], name="up2", mode="nearest"),
        conv("head", "up2", 16, 1),
        helper.make_node("Sigmoid", ["head"], ["prob"], name="prob_act"),
    ]
    graph = helper.make_graph(
        nodes,
        "dbnet_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, _SIZE, _SIZE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1, _SIZE, _SIZE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's IR (ONNX 1.12); onnx's newer default is too new for ORT 1.23
    return model


def test_dense_640_model_quantizes_under_the_cap(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    bundle = load_bundle(make_bundle(tmp_path, dbnet_like(), size=f"[{_SIZE}, {_SIZE}]"))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w", static=True)
    frames = tmp_path / "calib"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        img = cv2.GaussianBlur(rng.integers(0, 256, (_SIZE, _SIZE, 3), np.uint8), (9, 9), 0)
        cv2.imwrite(str(frames / f"f{i:02d}.png"), img)
    calib = load_calibration_set(frames, bundle, (_SIZE, _SIZE), 4, 2)
    model = onnx.load(str(prepared.path))
    names = [o for n in model.graph.node for o in n.output]
    per_frame = sum(activation_bytes(model, names, (1, 3, _SIZE, _SIZE)).values())
    # what the whole-tensor probe held: every activation of its frames, float and Q/DQ
    assert 2 * 4 * per_frame > _CAP_MIB << 20
    options = {
        "recipe": "onnxruntime",
        "method": "entropy",
        "work_dir": tmp_path / "q",
        "cache_dir": tmp_path / "cache",
        "memory_cap_mib": _CAP_MIB,
        "probe_frames": 4,
        "bias_correction": False,  # its passes stream the same way; kept short here
    }
    outcome = run_isolated(
        quantize_target,
        (prepared, calib, options),
        memory_cap_mib=_CAP_MIB,
        timeout_s=300,
        what="int8 quantization",
        scratch_dir=tmp_path,
    )
    q: QuantizedModel = outcome.value
    assert outcome.peak_rss_mib is not None and outcome.peak_rss_mib < _CAP_MIB
    assert q.path.is_file() and q.report["qdq_nodes"]["QuantizeLinear"] > 4
    assert q.report["sensitivity"] and q.report["output_error"] is not None
    memory = q.report["memory"]
    assert memory["cap_mib"] == _CAP_MIB and 0 < memory["budget_mib"] < _CAP_MIB
