"""``output.softmax``: a classifier whose graph already ends in Softmax is not softmaxed twice.

Real ONNX Runtime sessions on the same network with different heads (logits, Softmax, Exp of
LogSoftmax, Softmax then Flatten, bare LogSoftmax): the pipeline's postprocessor, configured by
the bundle as ``load_bundle`` settles it, reports the model's own Softmax probabilities.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from agent.backends.onnxruntime import OrtRunner
from agent.engine.bundle import ModelBundle, load_bundle
from agent.engine.onnxgraph import output_is_softmax
from agent.pipeline.frames import Frame
from agent.pipeline.postprocess import Postprocessor
from agent.vision.letterbox import LetterboxInfo, preprocess
from tests.helpers.onnx_models import make_bundle
from tests.helpers.softmax_heads import HEADS, classifier_with_head

LABELS = ("a", "b", "c", "d")


def _frames(n: int) -> list[Frame]:
    rng = np.random.default_rng(7)
    now = time.monotonic()
    return [
        Frame("cam0", i, rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), now, 0.0)
        for i in range(n)
    ]


def _run(bundle: ModelBundle, frames: list[Frame]) -> tuple[np.ndarray, list[LetterboxInfo]]:
    tensors, boxes = zip(
        *(preprocess(f.image, bundle.config.input, (32, 32)) for f in frames), strict=True
    )
    with OrtRunner(bundle.onnx_path, threads=1) as runner:
        out = runner.infer({"images": np.concatenate(tensors)})["out"]
    return out, list(boxes)


def _decoded(bundle: ModelBundle, frames: list[Frame]) -> np.ndarray:
    """The postprocessor's probabilities, [N, 4] by class id."""
    out, boxes = _run(bundle, frames)
    results = Postprocessor(bundle.config, LABELS).process(frames, {"out": out}, boxes)
    probs = np.zeros((len(frames), len(LABELS)), np.float32)
    for i, result in enumerate(results):
        for label, p in result.top_k:
            probs[i, LABELS.index(label)] = p
    return probs


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelBundle]:
    root = tmp_path_factory.mktemp("heads")
    return {
        head: load_bundle(make_bundle(root, classifier_with_head(head), name=head))
        for head in HEADS
    }


def test_graph_check_settles_output_softmax(bundles: dict[str, ModelBundle]) -> None:
    for head, bundle in bundles.items():
        assert bundle.config.output.softmax == HEADS[head][1], head
        assert output_is_softmax(bundle.onnx_path) is (HEADS[head][1] == "none")
        assert output_is_softmax(bundle.onnx_path, "scaled") is False  # an inner tensor


def test_probabilities_equal_the_models_own_softmax(bundles: dict[str, ModelBundle]) -> None:
    frames = _frames(4)
    reference, _ = _run(bundles["softmax"], frames)  # the model's own Softmax output
    assert np.allclose(reference.sum(axis=1), 1.0, atol=1e-5)
    assert reference.max() > 0.6  # peaked: a second softmax would visibly flatten it
    for head, bundle in bundles.items():
        np.testing.assert_allclose(_decoded(bundle, frames), reference, atol=1e-5, err_msg=head)


def test_the_old_double_softmax_is_what_none_avoids(
    bundles: dict[str, ModelBundle], tmp_path: Path
) -> None:
    frames = _frames(4)
    reference, _ = _run(bundles["softmax"], frames)
    forced = make_bundle(tmp_path, classifier_with_head("softmax"), name="forced-apply")
    yaml = forced / "model.yaml"
    yaml.write_text(yaml.read_text() + "  softmax: apply\n")
    bundle = load_bundle(forced)
    assert bundle.config.output.softmax == "apply"  # explicit values are not overridden
    doubled = _decoded(bundle, frames)
    assert np.abs(doubled - reference).max() > 0.1
    assert doubled.max() < reference.max()  # flattened toward uniform


def test_explicit_none_reports_the_values_as_they_are(tmp_path: Path) -> None:
    path = make_bundle(tmp_path, classifier_with_head("logits"), name="raw-scores")
    (path / "model.yaml").write_text((path / "model.yaml").read_text() + "  softmax: none\n")
    bundle = load_bundle(path)
    frames = _frames(2)
    out, _ = _run(bundle, frames)
    np.testing.assert_allclose(_decoded(bundle, frames), out, atol=1e-6)


def test_unreadable_onnx_leaves_auto_which_applies(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, b"not an onnx file"))
    assert bundle.config.output.softmax == "auto"
    assert bundle.config.output.applies_softmax
