"""``edge-agent infer`` (real subprocesses, real fp32 artifacts): the printed probabilities are
the model's own Softmax output whether or not its graph ends in Softmax, and an image too small
to mean anything is refused by name with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.backends.onnxruntime import OrtRunner
from agent.engine.bundle import load_bundle
from agent.vision.letterbox import load_image_or_npy, preprocess
from tests.helpers.cli_util import run_cli
from tests.helpers.onnx_models import make_bundle
from tests.helpers.softmax_heads import classifier_with_head

pytestmark = pytest.mark.timeout(120)


def _build(work: Path, bundle: Path) -> Path:
    proc = run_cli(
        "build", str(bundle), "--profile", "cpu", "--precision", "fp32",
        "--calib", str(work / "calib"), "--cache-dir", str(work / "cache"), "--json",
        cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout.splitlines()[-1])["artifact"])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fp32 artifacts of one network (ending in Softmax / in logits) and input images."""
    root = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(3)
    (root / "calib").mkdir()
    for i in range(40):
        cv2.imwrite(
            str(root / "calib" / f"{i:03d}.png"), rng.integers(0, 256, (32, 32, 3), np.uint8)
        )
    cv2.imwrite(str(root / "cat.png"), rng.integers(0, 256, (50, 70, 3), np.uint8))
    cv2.imwrite(str(root / "tiny.png"), np.full((1, 1, 3), 90, np.uint8))
    np.save(root / "tiny.npy", np.zeros((4, 4, 3), np.uint8))
    out = {"root": root}
    for head in ("softmax", "logits"):
        bundle = make_bundle(root, classifier_with_head(head), name=head)
        out[head] = _build(root, bundle)
        out[f"{head}-bundle"] = bundle
    return out


def _own_softmax(work: dict[str, Path], image: Path) -> np.ndarray:
    """The Softmax model's own output for ``image`` (ONNX Runtime on the bundle's ONNX)."""
    bundle = load_bundle(work["softmax-bundle"])
    tensor, _ = preprocess(load_image_or_npy(image), bundle.config.input, (32, 32))
    with OrtRunner(bundle.onnx_path, threads=1) as runner:
        return runner.infer({"images": tensor})["out"][0]


def _printed(artifact: Path, image: Path, cwd: Path) -> np.ndarray:
    proc = run_cli("infer", str(artifact), str(image), "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    probs = np.zeros(4, np.float32)
    for item in result["top_k"]:
        probs[item["class_id"]] = item["prob"]
    return probs


def test_printed_probabilities_are_the_models_softmax(work: dict[str, Path]) -> None:
    image = work["root"] / "cat.png"
    reference = _own_softmax(work, image)
    assert reference.max() > 0.6  # peaked: a second softmax would flatten it visibly
    manifests = {
        h: json.loads((work[h] / "artifact.json").read_text()) for h in ("softmax", "logits")
    }
    assert manifests["softmax"]["bundle"]["config"]["output"]["softmax"] == "none"
    assert manifests["logits"]["bundle"]["config"]["output"]["softmax"] == "apply"
    for head in ("softmax", "logits"):
        printed = _printed(work[head], image, work["root"])
        np.testing.assert_allclose(printed, reference, atol=2e-6, err_msg=head)


def test_artifact_without_a_settled_value_reads_the_bundle(work: dict[str, Path]) -> None:
    """A manifest from before ``output.softmax`` existed: infer settles it from the bundle."""
    manifest = work["softmax"] / "artifact.json"
    original = manifest.read_text()
    doc = json.loads(original)
    del doc["bundle"]["config"]["output"]["softmax"]
    try:
        manifest.write_text(json.dumps(doc))
        image = work["root"] / "cat.png"
        np.testing.assert_allclose(
            _printed(work["softmax"], image, work["root"]), _own_softmax(work, image), atol=2e-6
        )
    finally:
        manifest.write_text(original)


@pytest.mark.parametrize("name", ["tiny.png", "tiny.npy"])
def test_too_small_image_is_refused_by_name(work: dict[str, Path], name: str) -> None:
    root = work["root"]
    proc = run_cli("infer", str(work["logits"]), str(root / "cat.png"), str(root / name), cwd=root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(root / name) in proc.stderr and "too small" in proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
