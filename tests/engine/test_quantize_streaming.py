"""Streamed calibration and probe: ORT's ranges and the old probe's errors, in bounded memory;
the sensitivity ranking, the kept-float reasons, bias correction, the OOM stage."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator

from agent.config.device import DeviceProfile
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.prepare import prepare
from agent.engine.quantize.entry import quantize
from agent.engine.quantize.memory import activation_bytes, plan_groups
from agent.engine.quantize.oom import StageTracker, oom_fix
from agent.engine.quantize.ortcompat import load_ranges
from agent.engine.quantize.probe import node_errors
from agent.engine.quantize.ranges import calibrate_ranges
from agent.engine.quantize.reader import FrameReader
from tests.helpers.engine_util import Tiny, noise_frames, tiny_convnet
from tests.helpers.onnx_models import make_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, cpu_profile: DeviceProfile) -> Tiny:
    # 20 frames: more than ORT's old 8-frame chunks, so chunking would change the histograms
    root = tmp_path_factory.mktemp("stream")
    return tiny_convnet(root, cpu_profile, frames=22, count=20, heldout=2, seed=3)


def _ort_ranges(path: Path, reader: FrameReader, method: str, tmp: Path) -> dict[str, tuple]:
    """ORT's calibrator fed every frame in one collect_data call (as quantize_static does)."""
    enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    options = {} if method != "percentile" else {"percentile": 99.9, "symmetric": False}
    calibrator = create_calibrator(
        path,
        None,
        augmented_model_path=str(tmp / f"aug-{method}.onnx"),
        calibrate_method=enum.get(method, CalibrationMethod.Percentile),
        extra_options=options,
    )
    reader.rewind()
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
    return {
        k: tuple(np.asarray(v, np.float64).reshape(-1)[0] for v in d.range_value)
        for k, d in data.items()
    }


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_streamed_ranges_equal_orts_calibrator(tiny: Tiny, tmp_path: Path, method: str) -> None:
    _, prepared, calib = tiny
    expected = _ort_ranges(prepared.path, FrameReader("images", calib.calib), method, tmp_path)
    reader = FrameReader("images", calib.calib)
    cache = tmp_path / "ranges.json"
    # budget 0: every tensor is fetched in a group of its own
    count = calibrate_ranges(
        prepared,
        reader,
        method=method,
        percentile=99.9,
        cache_path=cache,
        tmp_dir=tmp_path,
        budget_mib=0,
    )
    got = load_ranges(cache)
    assert count == len(expected) > 5
    assert set(got.keys()) == set(expected)
    for name, (low, high) in expected.items():
        mine = [np.asarray(v, np.float64).reshape(-1)[0] for v in got[name].range_value]
        np.testing.assert_allclose(mine, [low, high], rtol=1e-6, atol=1e-7, err_msg=name)
    assert reader.calls == len(calib.calib)  # one counted pass; the streamed ones are not


def _old_channel_error(ref: np.ndarray, test: np.ndarray) -> float:
    """The probe's per-channel error as it was computed on whole concatenated tensors."""
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    if ref.ndim >= 2:
        ref = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1)
        test = np.moveaxis(test, 1, 0).reshape(test.shape[1], -1)
    else:
        ref, test = ref.reshape(1, -1), test.reshape(1, -1)
    centred = ref - ref.mean(axis=1, keepdims=True)
    signal = np.sum(centred * centred, axis=1)
    noise = np.sum((ref - test) ** 2, axis=1)
    live = signal > max(float(signal.max()) * 1e-9, 1e-20)
    return float(np.mean(np.minimum(noise[live] / signal[live], 2.0))) if live.any() else 0.0


def _all_tensors(path: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict:
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    runs = [dict(zip(names, session.run(names, f), strict=True)) for f in feeds]
    return {n: np.concatenate([np.asarray(r[n]) for r in runs]) for n in names}


def test_streamed_probe_equals_whole_tensor_probe(tiny: Tiny, tmp_path: Path) -> None:
    _, prepared, calib = tiny
    q = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="minmax",
        work_dir=tmp_path,
        auto_exclude=False,
        bias_correction=False,
    )
    feeds = [{"images": t} for t in calib.calib[:6]]
    added, out_err = node_errors(prepared.path, q.path, feeds, budget_mib=0)
    # the old way: every intermediate of every frame at once, after each tensor's Q/DQ pair
    qdq = onnx.load(str(q.path))
    q_out = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    graph = onnx.load(str(prepared.path)).graph
    produced = {o for n in qdq.graph.node for o in n.output}
    names = [o for n in graph.node for o in n.output if o in produced]
    ref = _all_tensors(prepared.path, names, feeds)
    test = _all_tensors(q.path, [dq_of.get(q_out.get(n, ""), n) for n in names], feeds)
    err = {n: _old_channel_error(ref[n], test[dq_of.get(q_out.get(n, ""), n)]) for n in names}
    assert len(err) >= 5
    for node in graph.node:
        outs = [err[o] for o in node.output if o in err]
        if not outs:
            assert node.name not in added  # a Relu folded into its Conv: no tensor of its own
            continue
        ins = [err.get(i, 0.0) for i in node.input if i in err]
        old = max(0.0, max(outs) - max(ins, default=0.0))
        assert added[node.name] == pytest.approx(old, rel=1e-6, abs=1e-9), node.name
    assert out_err == pytest.approx(err["logits"], rel=1e-6)
    assert max(added.values()) > 1e-4  # the probe measured something


def test_groups_fit_the_budget(tiny: Tiny) -> None:
    _, prepared, _ = tiny
    model = onnx.load(str(prepared.path))
    names = [o for n in model.graph.node for o in n.output]
    sizes = activation_bytes(model, names, (1, 3, 32, 32))
    assert sizes["c1"] == 8 * 16 * 16 * 4 and sizes["logits"] == 4 * 4
    groups = plan_groups(names, sizes, 8 * 16 * 16 * 4 * 2)
    assert [n for g in groups for n in g] == names
    assert all(sum(sizes[n] for n in g) <= 8 * 16 * 16 * 4 * 2 for g in groups)
    assert len(groups) > 2


def test_sensitivity_and_float_reasons(tiny: Tiny, tmp_path: Path) -> None:
    _, prepared, calib = tiny
    q = quantize(
        prepared,
        calib,
        recipe="tensorrt",
        method="entropy",
        keep_float=["conv2"],
        search_float=["add1"],
        work_dir=tmp_path,
        auto_exclude=False,
    )
    ranking = q.report["sensitivity"]
    assert ranking and {"node", "op", "added_error"} <= set(ranking[0])
    errors = [r["added_error"] for r in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert {r["node"] for r in ranking} & {"conv2", "add1"} == set()
    assert next(r for r in ranking if r["node"] == "conv1")["op"] == "Conv"
    reasons = {r["node"]: r["reason"] for r in q.report["kept_float"]}
    assert reasons["conv2"] == "keep_float in model.yaml"
    assert reasons["add1"] == "requested by search"
    assert {"conv2", "add1"} <= set(q.excluded_nodes)
    assert q.report["memory"]["budget_mib"] > 0 and q.report["peak_rss_mib"] > 0


def _biased_conv_model() -> onnx.ModelProto:
    """Two convs whose weights all sit 0.45 of a quantization step above a grid point, so
    per-channel symmetric INT8 rounds every weight down: a mean shift per output channel."""
    rng = np.random.default_rng(11)

    def biased(shape: tuple[int, ...]) -> np.ndarray:
        steps = rng.integers(5, 60, shape).astype(np.float64) + 0.45
        steps.reshape(shape[0], -1)[:, 0] = 127.0  # the channel max fixes the scale at 1/127
        return (steps / 127.0 * 0.2).astype(np.float32)

    inits = [
        numpy_helper.from_array(biased((8, 3, 3, 3)), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(biased((4, 8, 3, 3)) * -1, "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2", pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "biased",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's IR (ONNX 1.12); onnx's newer default is too new for ORT 1.23
    return model


def test_bias_correction_lowers_the_error(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, _biased_conv_model()))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    calib = load_calibration_set(
        noise_frames(tmp_path / "calib", 14, seed=3), bundle, (32, 32), 10, 4
    )

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path))
        return np.concatenate(
            [np.asarray(session.run(None, {"images": x})[0]) for x in calib.heldout]
        )

    ref = run(prepared.path)
    errors = {}
    for on in (False, True):
        q = quantize(
            prepared,
            calib,
            recipe="onnxruntime",
            method="minmax",
            work_dir=tmp_path / str(on),
            cache_dir=tmp_path,
            bias_correction=on,
            auto_exclude=False,
        )
        out = run(q.path)
        errors[on] = float(np.mean((out - ref) ** 2))
        report = q.report["bias_correction"]
    assert report["applied"] is True and report["layers"] == 2
    assert report["output_error_with"] < 0.5 * report["output_error_without"]
    assert errors[True] < 0.5 * errors[False]  # on held-out frames too


def test_oom_names_the_stage_and_a_fix_that_helps() -> None:
    seen: list[str] = []
    tracker = StageTracker(lambda s, f, m: seen.append(s))
    assert tracker.stage == "loading the model"
    tracker("calibrate", 0.1, "batch 1/8")
    assert tracker.stage == "calibration"
    tracker("probe", 0.0, "measuring")
    tracker("something-else", 0.0, "")
    assert tracker.stage == "node-error probe" and seen[-1] == "something-else"
    fix = oom_fix("calibration", 2048)
    assert "build.build_memory_cap_mib" in fix and "2048" in fix and "input.size" in fix
    assert "does not help" in fix
    assert "weights" in oom_fix("Q/DQ insertion", None)
