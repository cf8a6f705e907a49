"""A model bomb: a small, valid classifier bundle whose graph makes a huge tensor
(``ConstantOfShape`` of an INT64 shape initializer, 16000×16000 int64 = 1.9 GiB) from a few
hundred bytes of ONNX. Whatever parses, infers shapes of, folds or runs it must do so in the
memory-capped build child."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.assets import CLS_BUNDLE

__all__ = ["BOMB_SIDE", "bomb_bundle"]

#: the bomb's tensor is BOMB_SIDE × BOMB_SIDE int64
BOMB_SIDE = 16000


def bomb_bundle(dest: Path, *, version: int | None = None, side: int = BOMB_SIDE) -> Path:
    """A copy of the bundled shapes classifier whose logits get ``0 · ReduceSum(Cast(
    ConstantOfShape([side, side])))`` added: same answers, a ``side``² int64 tensor inside."""
    shutil.copytree(CLS_BUNDLE, dest)
    (dest / "metrics.json").unlink(missing_ok=True)
    if version is not None:
        path = dest / "model.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["version"] = version
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    model = onnx.load(str(dest / "model.onnx"))
    graph = model.graph
    out = graph.output[0].name
    raw = f"{out}_raw"
    for node in graph.node:
        node.output[:] = [raw if o == out else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([side, side], np.int64), "bomb_shape"),
            numpy_helper.from_array(np.array(0.0, np.float32), "bomb_zero"),
        ]
    )
    one = helper.make_tensor("bomb_value", TensorProto.INT64, [1], [1])
    graph.node.extend(
        [
            helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb_big"], value=one),
            helper.make_node("Cast", ["bomb_big"], ["bomb_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["bomb_f"], ["bomb_sum"], keepdims=0),
            helper.make_node("Mul", ["bomb_sum", "bomb_zero"], ["bomb_nil"]),
            helper.make_node("Add", [raw, "bomb_nil"], [out]),
        ]
    )
    onnx.save(model, str(dest / "model.onnx"))
    return dest
