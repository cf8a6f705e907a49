"""``edge-agent bench`` and ``inspect`` on a bare TensorRT plan (#18 item 5), in-process through
:func:`agent.cli.main.main`, against the fake TensorRT of each API generation and the fake CUDA
layer: the H2D / compute / D2H split measured with (fake) CUDA timing events, human and
``--json``; no transfers on a zero-copy integrated GPU; the engine's min/opt/max shapes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import runner as trt_runner
from agent.backends.tensorrt.timing import ZERO_COPY_NOTE
from agent.cli.main import main
from tests.fakes.tensorrt import GENERATIONS, FakeCuda, build_request, make_fake_tensorrt
from tests.fakes.tensorrt import onnx_relu_model as relu_model

BYTES_PER_MS = 1000.0
#: batch 1 of the fake model's [N, 3, 4, 4] float32 input and output
BYTES = 1 * 3 * 4 * 4 * 4
RELU_MS = 0.25  # the fake engine's one layer


@pytest.fixture(params=GENERATIONS)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = make_fake_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.fixture
def plan(tmp_path: Path, fake: Any) -> Path:
    """A bare plan as trtexec --saveEngine leaves it: the engine file alone, no manifest."""
    relu_model(tmp_path / "model.onnx")
    result = trt_backend.BACKEND.build(build_request(tmp_path))
    bare = tmp_path / "bare" / "model.engine"
    bare.parent.mkdir()
    bare.write_bytes((tmp_path / "artifact" / result.main_file).read_bytes())
    return bare


def _use_cuda(monkeypatch: pytest.MonkeyPatch, fake: Any, *, integrated: bool) -> FakeCuda:
    cuda = FakeCuda(fake._fake.memory, integrated=integrated, bytes_per_ms=BYTES_PER_MS)
    monkeypatch.setattr(trt_runner, "CUDA", cuda)  # what the runners bench makes activate with
    return cuda


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _bench(capsys: pytest.CaptureFixture[str], plan: Path, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "bench", str(plan), "--seconds", "0.1", "--warmup", "2", *extra)


def _constant(stats: dict[str, float], value: float) -> None:
    assert stats["min"] == stats["median"] == stats["max"] == pytest.approx(value)
    assert stats["std"] == 0.0


def test_bench_json_has_the_measured_split(
    plan: Path, fake: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cuda = _use_cuda(monkeypatch, fake, integrated=False)
    code, out, err = _bench(capsys, plan, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "plan" and doc["backend"] == "tensorrt"
    # the engine's profile (opt 4x3x4x4) with --batch's default 1 on the batch axis
    assert doc["input"] == {"name": "images", "shape": [1, 3, 4, 4], "dtype": "float32"}
    split = doc["split"]
    assert split["measured"] is True and "transfers" not in split
    _constant(split["h2d"], BYTES / BYTES_PER_MS)
    _constant(split["compute"], RELU_MS)
    _constant(split["d2h"], BYTES / BYTES_PER_MS)
    assert doc["inferences"] > 0
    assert len([e for e in cuda.events if e.timing]) == 4  # one runner: 4 events, made once
    assert all(e.closed for e in cuda.events) and not cuda.live


def test_bench_human_prints_h2d_compute_d2h(
    plan: Path, fake: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use_cuda(monkeypatch, fake, integrated=False)
    code, out, err = _bench(capsys, plan)
    assert code == 0, err
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
    assert lines["h2d"].startswith("h2d:        min = 0.192 ms, max = 0.192 ms")
    assert lines["compute"].startswith("compute:    min = 0.25 ms, max = 0.25 ms")
    assert lines["d2h"].startswith("d2h:        min = 0.192 ms")
    assert "std-dev = 0.0 ms" in lines["d2h"]
    assert "not separate" not in out and "transfers" not in lines


def test_zero_copy_bench_reports_no_transfers(
    plan: Path, fake: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cuda = _use_cuda(monkeypatch, fake, integrated=True)
    code, out, err = _bench(capsys, plan, "--json")
    assert code == 0, err
    split = json.loads(out)["split"]
    _constant(split["h2d"], 0.0)
    _constant(split["d2h"], 0.0)
    _constant(split["compute"], RELU_MS)
    assert split["transfers"] == ZERO_COPY_NOTE
    assert not {"htod", "dtoh"} & {c[0] for c in cuda.calls}
    code, out, err = _bench(capsys, plan)
    assert code == 0, err
    assert "h2d:        min = 0.0 ms" in out
    assert f"transfers:  {ZERO_COPY_NOTE}" in out


def test_bench_batch_outside_the_engine_profile(
    plan: Path, fake: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use_cuda(monkeypatch, fake, integrated=False)
    code, out, err = _bench(capsys, plan, "--batch", "8", "--json")
    assert code == 0, err
    assert json.loads(out)["input"]["shape"] == [8, 3, 4, 4]
    code, _, err = _bench(capsys, plan, "--batch", "9")
    assert code == 1 and "outside the batch range 1-8" in err


def test_inspect_shows_the_plan_profile(
    plan: Path, fake: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use_cuda(monkeypatch, fake, integrated=False)
    code, out, err = _run(capsys, "inspect", str(plan), "--json")
    assert code == 0, err
    doc = json.loads(out)
    (images,) = doc["inputs"]
    assert images["name"] == "images" and images["dynamic_axes"] == [0]
    assert images["profile"] == {
        "min": [1, 3, 4, 4],
        "opt": [4, 3, 4, 4],
        "max": [8, 3, 4, 4],
    }
    assert [o["name"] for o in doc["outputs"]] == ["scores"]
    code, out, err = _run(capsys, "inspect", str(plan))
    assert code == 0, err
    row = next(line for line in out.splitlines() if "images" in line)
    assert "?x3x4x4" in row and "1x3x4x4 / 4x3x4x4 / 8x3x4x4" in row
