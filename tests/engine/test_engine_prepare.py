"""prepare(): ONNX checks, opset upgrade, input/layout checks, profile shapes, shape inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.config.device import DeviceProfile
from agent.core.errors import ModelError
from agent.engine.bundle import load_bundle
from agent.engine.prepare import PreparedModel, prepare
from tests.assets import MODELS
from tests.helpers.engine_util import CPU_DYNAMIC_RANGE, shape_range
from tests.helpers.onnx_models import convnet, make_bundle


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"images": x})[0])


def test_prepare_fixed_size(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, convnet()))
    prepared = prepare(bundle, cpu_profile, tmp_path / "work")
    assert isinstance(prepared, PreparedModel)
    assert prepared.path == tmp_path / "work" / "prepared.onnx" and prepared.path.is_file()
    assert shape_range(prepared) == ((1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32))
    # H/W have min == max, so they are pinned; batch stays dynamic
    assert prepared.inputs[0].shape == ("batch", 3, 32, 32)
    assert prepared.outputs[0].name == "logits" and prepared.outputs[0].dtype == "float32"
    assert prepared.opset == 17
    x = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_run(prepared.path, x), _run(bundle.onnx_path, x), atol=1e-5)


def test_profile_shapes_when_size_is_null(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, convnet(), size="null"))
    dynamic = prepare(bundle, cpu_profile, tmp_path / "dyn")
    assert shape_range(dynamic) == CPU_DYNAMIC_RANGE
    assert dynamic.inputs[0].shape == ("batch", 3, "height", "width")
    static = prepare(bundle, cpu_profile, tmp_path / "static", static=True)
    assert static.inputs[0].shape == (1, 3, 256, 256)
    assert static.outputs[0].shape == (1, 4)
    assert any("static=True" in n for n in static.notes)


def test_opset_11_is_upgraded_to_13(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, convnet(opset=11)))
    prepared = prepare(bundle, cpu_profile, tmp_path / "work")
    assert prepared.opset == 13
    assert onnx.load(str(prepared.path)).opset_import[0].version == 13
    assert any("opset upgraded from 11 to 13" in n for n in prepared.notes)
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_run(prepared.path, x), _run(bundle.onnx_path, x), atol=1e-5)


def test_not_onnx_truncated_and_empty(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    good = convnet().SerializeToString()
    cases = {
        "text": b"this is a README, not a model\n" * 20,
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }
    for name, data in cases.items():
        bundle = load_bundle(make_bundle(tmp_path, data, name=name))
        with pytest.raises(ModelError) as info:
            prepare(bundle, cpu_profile, tmp_path / f"w-{name}")
        text = str(info.value)
        assert str(bundle.onnx_path) in text, name
        assert "fix:" in text and ("re-export" in text or "copy" in text), name


def test_custom_domain_operator_is_refused(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    model = convnet()
    model.graph.node[1].CopyFrom(
        helper.make_node("FancyRelu", ["c1"], ["r1"], name="relu1", domain="acme.ops")
    )
    model.opset_import.append(helper.make_opsetid("acme.ops", 1))
    bundle = load_bundle(make_bundle(tmp_path, model))
    with pytest.raises(
        ModelError, match=r"unsupported operator acme\.ops::FancyRelu.*relu1"
    ) as info:
        prepare(bundle, cpu_profile, tmp_path / "w")
    assert "model.onnx" in str(info.value) and info.value.fix


def test_unknown_standard_operator_is_refused(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    model = convnet()
    model.graph.node[1].CopyFrom(helper.make_node("Relu6", ["c1"], ["r1"], name="relu1"))
    bundle = load_bundle(make_bundle(tmp_path, model))
    with pytest.raises(ModelError, match="Relu6"):
        prepare(bundle, cpu_profile, tmp_path / "w")


def test_rank_contradicting_layout(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 32])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["y"], name="r")], "g", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bundle = load_bundle(make_bundle(tmp_path, model))
    with pytest.raises(ModelError, match=r"rank 3.*layout NCHW"):
        prepare(bundle, cpu_profile, tmp_path / "w")


def test_channels_contradicting_layout(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    model = convnet(dims=(1, 3, 32, 32))
    bundle = load_bundle(make_bundle(tmp_path, model, layout="NHWC"))
    with pytest.raises(ModelError, match="32 channels at axis 3") as info:
        prepare(bundle, cpu_profile, tmp_path / "w")
    assert "NCHW" in str(info.value)


def test_wrong_input_name(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    d = make_bundle(tmp_path, convnet())
    (d / "model.yaml").write_text(
        (d / "model.yaml").read_text().replace("name: images", "name: input")
    )
    with pytest.raises(ModelError, match=r"input 'input'.*\['images'\]"):
        prepare(load_bundle(d), cpu_profile, tmp_path / "w")


def test_fixed_onnx_size_contradicting_yaml(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, convnet(dims=(1, 3, 48, 48))))
    with pytest.raises(ModelError, match="fixed at 48"):
        prepare(bundle, cpu_profile, tmp_path / "w")


def _external(tmp_path: Path, location: str) -> Path:
    d = make_bundle(tmp_path, convnet(), name=f"ext-{location.replace('/', '_').replace('.', '_')}")
    model = onnx.load(str(d / "model.onnx"))
    onnx.save_model(
        model,
        str(d / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    if location != "weights.bin":  # move the data and point the model at it
        model = onnx.load(str(d / "model.onnx"), load_external_data=False)
        target = (d / location).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        (d / "weights.bin").rename(target)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, str(d / "model.onnx"))
    return d


def test_external_data_inside_bundle_is_loaded(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    prepared = prepare(load_bundle(_external(tmp_path, "weights.bin")), cpu_profile, tmp_path / "w")
    assert any("external data" in n for n in prepared.notes)
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert _run(prepared.path, x).shape == (1, 4)


def test_external_data_outside_bundle_is_refused(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    d = _external(tmp_path, "../stolen.bin")
    with pytest.raises(ModelError, match="outside the bundle") as info:
        prepare(load_bundle(d), cpu_profile, tmp_path / "w")
    assert "stolen.bin" in str(info.value)


def test_external_data_length_lie_is_a_model_error(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    """A tensor claiming more bytes than its data file holds is the bundle's error (named, with
    a fix), not an internal one."""
    d = _external(tmp_path, "weights.bin")
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    entries = model.graph.initializer[0].external_data
    for entry in entries:
        if entry.key == "length":
            entry.value = "999999"
    if not any(e.key == "length" for e in entries):
        entries.add(key="length", value="999999")
    onnx.save(model, str(d / "model.onnx"))
    with pytest.raises(ModelError, match="external data does not match its file") as info:
        prepare(load_bundle(d), cpu_profile, tmp_path / "w")
    assert info.value.fix and str(d / "model.onnx") in str(info.value)


def test_external_data_symlink_out_of_bundle_is_refused(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    d = _external(tmp_path, "weights.bin")
    outside = tmp_path / "elsewhere.bin"
    (d / "weights.bin").rename(outside)
    (d / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelError, match="outside the bundle"):
        prepare(load_bundle(d), cpu_profile, tmp_path / "w")


def concat_of_shapes_model() -> onnx.ModelProto:
    """Valid graph on which onnxruntime's symbolic shape inference asserts: a Concat of 1-D
    shape values with ``axis=-1`` (it asserts ``axis == 0``), as in real YOLO exports. One
    operand is a Shape, so constant folding cannot remove the Concat."""
    model = convnet(dims=(1, 3, 32, 32))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.full((2,), -1, np.int64), "kb"))
    graph.node[-1].output[0] = "pre"
    graph.node.extend(
        [
            helper.make_node("Shape", ["pre"], ["ka"], name="shape"),
            helper.make_node("Concat", ["ka", "kb"], ["ki"], name="anchors", axis=-1),
            helper.make_node("Cast", ["ki"], ["k"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Add", ["pre", "k"], ["logits"], name="offset"),
        ]
    )
    return model


def test_symbolic_shape_inference_failure_falls_back(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    bundle = load_bundle(make_bundle(tmp_path, concat_of_shapes_model()))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    notes = " ".join(prepared.notes)
    assert "symbolic shape inference failed" in notes
    assert "fell back to onnx.shape_inference" in notes
    # ONNX's own inference still typed the intermediate tensors
    inferred = {vi.name for vi in onnx.load(str(prepared.path)).graph.value_info}
    assert {"c1", "r2", "k"} <= inferred
    x = np.random.default_rng(3).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_run(prepared.path, x), _run(bundle.onnx_path, x), atol=1e-5)


def test_real_classifier(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    prepared = prepare(load_bundle(MODELS / "shapes-cls"), cpu_profile, tmp_path / "w")
    shapes = prepared.shapes["images"]
    assert (shapes.min, shapes.max) == ((1, 3, 64, 64), (4, 3, 64, 64))
    assert prepared.outputs[0].name == "logits" and prepared.outputs[0].shape[-1] == 4


def test_real_detector(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(MODELS / "shapes-det")
    prepared = prepare(bundle, cpu_profile, tmp_path / "w", static=True)
    assert prepared.inputs[0].shape == (1, 3, 256, 256)
    assert prepared.shapes["images"].max == (4, 3, 256, 256)
    out = prepared.outputs[0]
    assert out.name == "output0" and out.shape[0] == 1 and len(out.shape) == 3
    x = np.full((1, 3, 256, 256), 114 / 255, np.float32)
    assert _run(prepared.path, x).shape[:2] == (1, 8)
