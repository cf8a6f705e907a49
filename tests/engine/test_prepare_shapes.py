"""prepare(): the image input's axes set by position (shared and anonymous dim names, dims <= 0),
the note reads back the prepared file, and errors name the bundle's file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorShapeProto, helper

from agent.config.device import DeviceProfile
from agent.core.errors import ModelError
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.prepare import _scrub, prepare  # pyright: ignore[reportPrivateUsage]
from agent.engine.quantize.entry import quantize
from tests.helpers.engine_util import CPU_DYNAMIC_RANGE, noise_frames, shape_range
from tests.helpers.onnx_models import convnet, make_bundle

Dim = int | str | None


def _set_dims(dims: TensorShapeProto, values: tuple[Dim, ...]) -> None:
    """``None`` leaves the dim anonymous (neither value nor name)."""
    del dims.dim[:]
    for v in values:
        d = dims.dim.add()
        if isinstance(v, int):
            d.dim_value = v
        elif isinstance(v, str):
            d.dim_param = v


def _model(image: tuple[Dim, ...], logits: tuple[Dim, ...]) -> onnx.ModelProto:
    model = convnet()
    _set_dims(model.graph.input[0].type.tensor_type.shape, image)
    _set_dims(model.graph.output[0].type.tensor_type.shape, logits)
    return model


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"images": x})[0])


def _value_info_dims(path: Path, name: str) -> list[int | str]:
    graph = onnx.load(str(path)).graph
    vi = next(v for v in (*graph.value_info, *graph.output) if v.name == name)
    return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_shared_dim_name_gets_each_axis_its_own_value(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    """PaddlePaddle-style: batch, H and W all named '?'; a stale value_info uses '?' too."""
    model = _model(("?", 3, "?", "?"), ("?", 4))
    model.graph.value_info.append(
        helper.make_tensor_value_info("c1", onnx.TensorProto.FLOAT, ["?", 8, "?", "?"])
    )
    bundle = load_bundle(make_bundle(tmp_path, model, size="[48, 192]"))
    work = tmp_path / "work"
    prepared = prepare(bundle, cpu_profile, work)

    assert prepared.inputs[0].shape == ("images_dim0", 3, 48, 192)
    assert prepared.shapes["images"].opt == (1, 3, 48, 192)
    # the stale '?' shape of c1 was cleared and inferred again: stride 2 -> 24 x 96
    assert _value_info_dims(prepared.path, "c1")[1:] == [8, 24, 96]
    note = next(n for n in prepared.notes if n.startswith("input 'images'"))
    assert "['images_dim0', 3, 48, 192]" in note and "['?']" in note
    assert not any(str(work) in n for n in prepared.notes)
    # batch stayed dynamic (profile batch 1..4) and runs at H != W
    x = np.random.default_rng(0).random((3, 3, 48, 192), dtype=np.float32)
    np.testing.assert_allclose(_run(prepared.path, x), _run(bundle.onnx_path, x), atol=1e-5)

    # and it calibrates and quantizes at that shape
    calib = load_calibration_set(
        noise_frames(tmp_path / "calib", 6, (60, 200)), bundle, (48, 192), 4, 2
    )
    assert calib.calib[0].shape == (1, 3, 48, 192)
    q = quantize(
        prepared,
        calib,
        recipe="tensorrt",
        method="minmax",
        work_dir=tmp_path / "q",
        auto_exclude=False,
    )
    out = _run(q.path, calib.heldout[0])
    assert out.shape == (1, 4) and np.isfinite(out).all()


def test_minus_one_batch_and_anonymous_dims_are_dynamic(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    model = _model((-1, None, 0, None), (-1, 4))
    bundle = load_bundle(make_bundle(tmp_path, model, size="null"))
    dynamic = prepare(bundle, cpu_profile, tmp_path / "dyn")
    # -1 is not "batch fixed to -1": the profile's batch range applies
    assert shape_range(dynamic) == CPU_DYNAMIC_RANGE
    assert not any("fixed to" in n for n in dynamic.notes)
    # the channel axis (min == max == 3) is pinned, the others get names of their own
    assert dynamic.inputs[0].shape == ("images_dim0", 3, "images_dim2", "images_dim3")
    reference = tmp_path / "reference.onnx"  # same weights, plain dims (ORT refuses H = 0)
    onnx.save(convnet(), str(reference))
    for shape in ((2, 3, 224, 288), (1, 3, 320, 256)):
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        np.testing.assert_allclose(_run(dynamic.path, x), _run(reference, x), atol=1e-5)

    static = prepare(bundle, cpu_profile, tmp_path / "static", static=True)
    assert static.inputs[0].shape == (1, 3, 256, 256)
    assert static.outputs[0].shape == (1, 4)  # the stale -1 of the output was inferred again
    note = next(n for n in static.notes if n.startswith("input 'images'"))
    assert "[1, 3, 256, 256]" in note and "static=True" in note


def test_minus_one_batch_with_fixed_size(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, _model((-1, 3, 32, 32), (-1, 4))))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    assert prepared.shapes["images"].max == (4, 3, 32, 32)
    assert prepared.inputs[0].shape == ("images_dim0", 3, 32, 32)
    x = np.zeros((4, 3, 32, 32), np.float32)
    assert _run(prepared.path, x).shape == (4, 4)


def test_unique_dim_name_is_fixed_graph_wide(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    """A name that belongs to one axis is pinned everywhere it appears (here: the output)."""
    bundle = load_bundle(make_bundle(tmp_path, convnet(), size="null"))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w", static=True)
    assert prepared.inputs[0].shape == (1, 3, 256, 256)
    assert _value_info_dims(prepared.path, "logits") == [1, 4]


def test_note_reads_back_the_prepared_file(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, _model(("n", 3, "h", "w"), ("n", 4))))
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    graph = onnx.load(str(prepared.path)).graph
    real = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert real == ["n", 3, 32, 32]
    assert f"input 'images' in the prepared model: {real}" in " ".join(prepared.notes)


def test_errors_and_notes_name_the_bundle_file(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(make_bundle(tmp_path, convnet()))
    work = tmp_path / ".tmp-build-x" / "prepare"
    prepared = prepare(bundle, cpu_profile, work)
    assert prepared.source == bundle.onnx_path
    assert prepared.path.parent == work
    assert not any(str(work) in n for n in prepared.notes)
    text = (
        f"Load model from {work}/prepare.ab12/staged.onnx failed: bad; also '{work}/prepared.onnx'"
    )
    scrubbed = _scrub(text, work, bundle.onnx_path)
    assert str(work) not in scrubbed and scrubbed.count(str(bundle.onnx_path)) == 2
    # a contradiction between model.yaml and the file names model.yaml, not a temp file
    fixed = load_bundle(make_bundle(tmp_path, convnet(dims=(1, 3, 48, 48)), name="fixed"))
    with pytest.raises(ModelError) as info:
        prepare(fixed, cpu_profile, work / "2")
    assert str(fixed.directory / "model.yaml") in str(info.value)
    assert str(work) not in str(info.value)
