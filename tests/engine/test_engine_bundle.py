"""Model bundles: model.yaml + ONNX + labels, errors that name the file and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.core.errors import ConfigError, ModelError
from agent.core.fsutil import sha256_file
from agent.engine.bundle import ModelBundle, load_bundle
from tests.assets import MODELS

YAML = """name: tiny
version: 3
task: classify
input:
  name: images
  size: [16, 16]
  resize: stretch
output:
  decode: softmax_topk
labels: {labels}
"""


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    node = helper.make_node("Conv", ["images", "w"], ["y"], name="conv")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _bundle(tmp_path: Path, labels: str = "[a, b]") -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    onnx.save(_model(), d / "model.onnx")
    (d / "model.yaml").write_text(YAML.format(labels=labels))
    return d


def test_load_from_directory_and_yaml(tmp_path: Path) -> None:
    d = _bundle(tmp_path)
    bundle = load_bundle(d)
    assert isinstance(bundle, ModelBundle)
    assert bundle.config.name == "tiny" and bundle.config.version == 3
    assert bundle.labels == ("a", "b")
    assert bundle.onnx_path == (d / "model.onnx").resolve()
    assert bundle.onnx_sha256 == sha256_file(d / "model.onnx")
    assert load_bundle(d / "model.yaml") == bundle


def test_labels_from_file(tmp_path: Path) -> None:
    d = _bundle(tmp_path, labels="labels.txt")
    (d / "labels.txt").write_text("cat\n\n dog \n")
    assert load_bundle(d).labels == ("cat", "dog")


def test_missing_labels_file_names_yaml_and_fix(tmp_path: Path) -> None:
    d = _bundle(tmp_path, labels="names.txt")
    with pytest.raises(ModelError) as info:
        load_bundle(d)
    text = str(info.value)
    assert "model.yaml" in text and "names.txt" in text and "fix:" in text


def test_missing_yaml_and_missing_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"no model\.yaml"):
        load_bundle(empty)
    with pytest.raises(ModelError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_missing_onnx(tmp_path: Path) -> None:
    d = _bundle(tmp_path)
    (d / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model\.onnx.*does not exist") as info:
        load_bundle(d)
    assert info.value.fix


def test_onnx_symlink_leaving_bundle_is_refused(tmp_path: Path) -> None:
    d = _bundle(tmp_path)
    outside = tmp_path / "outside.onnx"
    (d / "model.onnx").rename(outside)
    os.symlink(outside, d / "model.onnx")
    with pytest.raises(ModelError, match="outside the bundle"):
        load_bundle(d)


def test_invalid_yaml_is_config_error_with_line(tmp_path: Path) -> None:
    d = _bundle(tmp_path)
    (d / "model.yaml").write_text(YAML.format(labels="[a]").replace("task: classify", "task: x"))
    with pytest.raises(ConfigError) as info:
        load_bundle(d)
    assert "model.yaml:3: task" in str(info.value)


def test_hash_covers_external_data(tmp_path: Path) -> None:
    d = tmp_path / "ext"
    d.mkdir()
    model = _model()
    big = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 1, 64, 64), "big")
    model.graph.initializer.append(big)
    onnx.save_model(
        model, str(d / "model.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    (d / "model.yaml").write_text(YAML.format(labels="[a, b]"))
    first = load_bundle(d).onnx_sha256
    data = bytearray((d / "w.bin").read_bytes())
    data[-1] ^= 0xFF
    (d / "w.bin").write_bytes(bytes(data))
    assert load_bundle(d).onnx_sha256 != first


@pytest.mark.parametrize("name", ["shapes-cls", "shapes-det"])
def test_bundled_models_load(name: str) -> None:
    bundle = load_bundle(MODELS / name)
    assert bundle.labels == ("circle", "square", "triangle", "cross")
    cfg = bundle.config
    if name == "shapes-cls":
        assert cfg.task == "classify" and cfg.input.resize == "stretch"
        assert cfg.input.size == (64, 64) and cfg.tolerance.top1_agreement_min == 0.99
    else:
        assert cfg.task == "detect" and cfg.output.decode == "yolov8"
        assert cfg.input.resize == "letterbox" and cfg.input.size == (256, 256)
        assert cfg.input.pad_value == 114 and cfg.tolerance.box_agreement_min == 0.95
