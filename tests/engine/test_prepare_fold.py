"""prepare(): BatchNormalization folded into the Conv/ConvTranspose/Gemm before it, constant
subgraphs folded into initializers, node names kept, outputs unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from agent.config.device import DeviceProfile
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.prepare import prepare
from agent.engine.quantize.entry import quantize
from tests.helpers.onnx_models import convnet, make_bundle


class _Builder:
    """Nodes and random initializers of a test graph."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def w(self, name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        data = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def bn(self, name: str, x: str, channels: int) -> str:
        r = self.rng
        params = {
            "scale": r.uniform(0.5, 2.0, channels),
            "beta": r.standard_normal(channels),
            "mean": r.standard_normal(channels),
            "var": r.uniform(0.2, 3.0, channels),
        }
        for key, value in params.items():
            self.inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}.{key}"))
        inputs = [x, *(f"{name}.{key}" for key in params)]
        self.nodes.append(
            helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=1e-3)
        )
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def model(self, output: str, out_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "bn",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def bn_model() -> onnx.ModelProto:
    """Conv(bias)->BN, Conv(no bias, shared weight)->BN twice, grouped ConvTranspose->BN,
    Gemm(transB, alpha, beta)->BN, Gemm->BN, and one BN after an Add (not foldable)."""
    b = _Builder()
    x = b.node("Conv", ["images", b.w("w1", (8, 3, 3, 3)), b.w("b1", (8,))], "conv1", pads=[1] * 4)
    x = b.node("Relu", [b.bn("bn1", x, 8)], "relu1")
    shared = b.w("wshared", (8, 8, 3, 3), 0.2)
    y1 = b.bn("bn2a", b.node("Conv", [x, shared], "conv2a", pads=[1] * 4), 8)
    y2 = b.bn("bn2b", b.node("Conv", [x, shared], "conv2b", pads=[1] * 4), 8)
    x = b.bn("bn_add", b.node("Add", [y1, y2], "add"), 8)
    x = b.node(
        "ConvTranspose", [x, b.w("wt", (8, 3, 2, 2)), b.w("bt", (6,))], "deconv", strides=[2, 2],
        group=2,
    )  # fmt: skip
    x = b.bn("bn_t", x, 6)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flat")
    gemm1 = ["flat", b.w("wg1", (5, 6)), b.w("bg1", (5,))]
    x = b.bn("bn_g1", b.node("Gemm", gemm1, "fc1", transB=1, alpha=0.7, beta=1.3), 5)
    x = b.bn("bn_g2", b.node("Gemm", [x, b.w("wg2", (5, 4))], "fc2"), 4)
    return b.model(x, ["n", 4])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"images": x})[0])


def _ops(path: Path) -> dict[str, str]:
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_batchnorm_folded_into_conv_convtranspose_and_gemm(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    bundle = load_bundle(make_bundle(tmp_path, bn_model(), size="[16, 20]"))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    ops = _ops(prepared.path)
    # every BN after a Conv/ConvTranspose/Gemm is gone; the one after an Add stays
    assert [n for n, op in ops.items() if op == "BatchNormalization"] == ["bn_add"]
    assert prepared.folded == {
        "bn1": "conv1",
        "bn2a": "conv2a",
        "bn2b": "conv2b",
        "bn_t": "deconv",
        "bn_g1": "fc1",
        "bn_g2": "fc2",
    }
    for name in ("conv1", "conv2a", "conv2b", "deconv", "fc1", "fc2"):  # names kept
        assert name in ops
    notes = " ".join(prepared.notes)
    assert "folded 6 BatchNormalization nodes" in notes
    assert "'bn_add': its input comes from Add 'add'" in notes
    # the two convs that shared a weight got weights of their own
    graph = onnx.load(str(prepared.path)).graph
    convs = {n.name: n for n in graph.node}
    assert convs["conv2a"].input[1] != convs["conv2b"].input[1]
    assert not any(t.name.startswith("bn1.") for t in graph.initializer)  # BN params dropped
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 20)).astype(np.float32)
    np.testing.assert_allclose(
        _run(prepared.path, x), _run(bundle.onnx_path, x), rtol=1e-4, atol=1e-4
    )


def test_keep_float_naming_a_batchnorm_leaves_it(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    d = make_bundle(tmp_path, bn_model(), size="[16, 20]")
    (d / "model.yaml").write_text((d / "model.yaml").read_text() + "keep_float: [bn1]\n")
    bundle = load_bundle(d)
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    assert _ops(prepared.path)["bn1"] == "BatchNormalization"
    assert "bn1" not in prepared.folded and prepared.folded["bn2a"] == "conv2a"
    assert any("'bn1' not folded into 'conv1'" in n and "keep_float" in n for n in prepared.notes)
    frames = tmp_path / "calib"
    frames.mkdir()
    for i in range(4):
        np.save(frames / f"f{i}.npy", np.random.default_rng(i).random((1, 3, 16, 20), np.float32))
    calib = load_calibration_set(frames, bundle, (16, 20), 3, 1)
    q = quantize(
        prepared,
        calib,
        recipe="tensorrt",
        method="minmax",
        keep_float=["bn1"],
        work_dir=tmp_path / "q",
        auto_exclude=False,
    )
    assert "bn1" in q.excluded_nodes
    assert _run(q.path, calib.heldout[0]).shape == (1, 4)


def test_constant_subgraphs_folded_names_kept(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    """Constant -> Cast -> Mul, a Transpose of a weight into a Conv, and a Shape of the
    (dynamic) input that must stay."""
    model = convnet(dims=("batch", 3, 32, 32))
    graph = model.graph
    w1 = next(t for t in graph.initializer if t.name == "w1")
    transposed = numpy_helper.to_array(w1).transpose(1, 0, 2, 3).copy()
    w1.CopyFrom(numpy_helper.from_array(transposed, "w1"))
    scale = numpy_helper.from_array(np.array(0.5, np.float64), "half")
    graph.node[0].input[1] = "w1t"
    graph.node[-1].output[0] = "pre"
    graph.node.insert(
        0, helper.make_node("Transpose", ["w1"], ["w1t"], name="wt", perm=[1, 0, 2, 3])
    )
    graph.node.extend(
        [
            helper.make_node("Constant", [], ["k64"], name="k", value=scale),
            helper.make_node("Cast", ["k64"], ["k32"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["pre", "k32"], ["scaled"], name="mul"),
            helper.make_node("Shape", ["images"], ["shp"], name="shape"),
            helper.make_node("Gather", ["shp", "zero"], ["n0"], name="batch_of", axis=0),
            helper.make_node("Concat", ["n0", "four"], ["shp_out"], name="cat", axis=0),
            helper.make_node("Reshape", ["scaled", "shp_out"], ["logits"], name="reshape"),
        ]
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([4], np.int64), "four"),
        ]
    )
    bundle = load_bundle(make_bundle(tmp_path, model))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    ops = _ops(prepared.path)
    assert not {"wt", "k", "cast"} & set(ops)  # folded away
    assert {"conv1", "mul", "shape", "batch_of", "cat", "reshape"} <= set(ops)  # names kept
    assert "folded 3 constant nodes into initializers" in " ".join(prepared.notes)
    inits = {t.name for t in onnx.load(str(prepared.path)).graph.initializer}
    assert "w1t" in inits and "w1" not in inits  # the untransposed weight is not kept too
    x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_run(prepared.path, x), _run(bundle.onnx_path, x), rtol=1e-5)
