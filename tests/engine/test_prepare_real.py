"""prepare() on real exports (tests/fixtures/models, made by scripts/make_real_assets.py): torch
exports whose H and W share the dim name '?' with BatchNormalization left unfused, a DBNet-like
segmenter with ConvTranspose+BN, and a model with a -1 batch and anonymous H/W."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.config.device import DeviceProfile
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.prepare import prepare
from agent.engine.quantize.entry import quantize
from tests.assets import (
    ANON_DIMS_BUNDLE,
    DBNET_BUNDLE,
    MOBILENETV3_BUNDLE,
    RESNET_BUNDLE,
    YOLOV8N_BUNDLE,
)
from tests.helpers.scenes import write_calib


def _run(path: Path, name: str, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, {name: x})]


def _batchnorms(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize(
    ("bundle_dir", "shape", "bns"),
    [
        (MOBILENETV3_BUNDLE, (1, 3, 128, 160), 34),
        (RESNET_BUNDLE, (1, 3, 128, 160), 20),
        (DBNET_BUNDLE, (1, 3, 640, 640), 16),
        (ANON_DIMS_BUNDLE, (1, 3, 64, 80), 0),
    ],
    ids=["mobilenetv3", "resnet", "dbnet", "anon-dims"],
)
def test_real_export_prepares_exactly(
    tmp_path: Path, cpu_profile: DeviceProfile, bundle_dir: Path, shape: tuple[int, ...], bns: int
) -> None:
    bundle = load_bundle(bundle_dir)
    prepared = prepare(bundle, cpu_profile, tmp_path / "w", static=True)
    name = prepared.inputs[0].name
    assert prepared.inputs[0].shape == shape
    assert f"input '{name}' in the prepared model: {list(shape)}" in " ".join(prepared.notes)
    assert _batchnorms(bundle.onnx_path) == bns and _batchnorms(prepared.path) == 0
    assert len(prepared.folded) == bns
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for got, want in zip(
        _run(prepared.path, name, x), _run(bundle.onnx_path, name, x), strict=True
    ):
        np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max()))
        )


def test_shared_dim_classifier_calibrates_at_its_size(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    """H = 128, W = 160 although both are named '?' (was: 'Got 160 Expected 128')."""
    bundle = load_bundle(MOBILENETV3_BUNDLE)
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    assert prepared.inputs[0].shape[1:] == (3, 128, 160)
    write_calib(tmp_path / "calib", "classify", 5, (160, 128))
    calib = load_calibration_set(tmp_path / "calib", bundle, (128, 160), 4, 1)
    q = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="minmax",
        work_dir=tmp_path / "q",
        auto_exclude=False,
    )
    assert _batchnorms(q.path) == 0
    (logits,) = _run(q.path, "x", calib.heldout[0])
    assert logits.shape == (1, 4) and np.isfinite(logits).all()


def test_symbolic_inference_leaves_nothing_in_the_working_directory(
    tmp_path: Path, cpu_profile: DeviceProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's symbolic shape inference gives up on the dynamic YOLOv8n export and then
    saves its partial model (plus a uuid-named data file) into the working directory; prepare
    must clean that up."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    prepared = prepare(load_bundle(YOLOV8N_BUNDLE), cpu_profile, tmp_path / "w", static=False)
    assert "fell back to onnx.shape_inference" in " ".join(prepared.notes)
    assert sorted(p.name for p in cwd.iterdir()) == []
