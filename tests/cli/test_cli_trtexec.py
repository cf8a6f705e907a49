"""trtexec habits (#18 item 5): build overrides recorded in the artifact and in the cache key,
``inspect``/``bench``/``infer`` on an ``.onnx`` and on a bare plan, bench statistics, help with
defaults, ``--batch 4`` on the cpu profile. Real ONNX Runtime builds of the bundled classifier
(fp32: no calibration run), in-process through :func:`agent.cli.main.main`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.base import Runner
from agent.backends.registry import get_backend
from agent.cli.bench import run_bench
from agent.cli.main import build_parser, main
from agent.core.errors import BackendUnavailable
from agent.engine.cache import load_artifact
from agent.engine.onnxfiles import ONNX_FILES
from tests.assets import CLS_BUNDLE, CLS_CALIB, CLS_HELDOUT

FP32 = ["--profile", "cpu", "--precision", "fp32", "--calib", str(CLS_CALIB)]
GATE = ["--gate-seconds", "0.2"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _result(out: str) -> dict[str, Any]:
    """The build's result: the last JSON line (progress events come before it off a TTY)."""
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trtexec-cache")


@pytest.fixture(scope="module")
def plain(cache: Path) -> Path:
    """The classifier built with the profile alone (fp32)."""
    code = main(["build", str(CLS_BUNDLE), *FP32, *GATE, "--cache-dir", str(cache), "--json"])
    assert code == 0
    (entry,) = [p for p in cache.iterdir() if p.name.startswith("shapes-cls-fp32-")]
    return entry


def test_batch_4_runs_on_the_cpu_profile(plain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the cpu profile's batch range is 1-4: the ONNX Runtime build keeps the batch axis dynamic
    manifest = load_artifact(plain).manifest
    assert manifest["inputs"][0]["shape"][0] == "batch" and manifest["dynamic_batch"] is True
    code, out, _ = _run(capsys, "bench", str(plain), "--batch", "4", "--seconds", "0.2", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["input"]["shape"] == [4, 3, 64, 64] and doc["batch"] == 4
    assert doc["throughput"]["images_per_s"] == pytest.approx(
        4 * doc["throughput"]["inferences_per_s"], rel=0.01
    )
    code, _, err = _run(capsys, "bench", str(plain), "--batch", "5", "--seconds", "0.1")
    assert code == 1 and "outside the batch range 1-4" in err and "--shapes images:" in err


def test_bench_statistics_human_and_json(plain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "bench", str(plain), "--seconds", "0.2", "--json")
    assert code == 0
    lat = json.loads(out)["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    split = json.loads(out)["split"]
    assert split["measured"] is False and "not separate" in split["note"]
    assert split["compute"] == lat
    code, out, _ = _run(capsys, "bench", str(plain), "--seconds", "0.2")
    assert code == 0
    for field in ("qps", "min = ", "max = ", "mean = ", "median = ", "p95 = ", "p99 = ", "std-dev"):
        assert field in out
    assert "transfers are not separate" in out


def test_overrides_win_are_keyed_and_recorded(
    plain: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "out" / "cls.onnx"
    shapes = ["--min-shapes", "images:1x3x64x64", "--opt-shapes", "images:2x3x64x64"]
    argv = ["build", str(CLS_BUNDLE), *FP32, *GATE, "--cache-dir", str(cache), "--json"]
    argv += [*shapes, "--max-shapes", "images:8x3x64x64", "--workspace", "128"]
    code, out, _ = _run(capsys, *argv, "--save-engine", str(saved))
    assert code == 0
    result = _result(out)
    art = Path(result["artifact"])
    assert art != plain and not result["cache_hit"]  # never the engine built without them
    manifest = load_artifact(art).manifest
    wanted = {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [8, 3, 64, 64]}
    assert manifest["overrides"] == {"shapes": {"images": wanted}, "workspace_mib": 128}
    assert manifest["shapes"]["images"] == wanted and manifest["key"]["workspace_mib"] == 128
    assert manifest["key"]["recipe"]["overrides"] == manifest["overrides"]
    assert saved.read_bytes() == (art / manifest["main_file"]).read_bytes()
    assert result["saved"] == [str(saved)]
    code, out, _ = _run(capsys, "bench", str(art), "--batch", "8", "--seconds", "0.1", "--json")
    assert code == 0 and json.loads(out)["input"]["shape"][0] == 8
    code, out, _ = _run(capsys, *argv)  # the same overrides again: a cache hit
    assert code == 0 and _result(out)["cache_hit"] and _result(out)["artifact"] == str(art)


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--shapes", "input:1x3x64x64"], 2, "its inputs are ['images']"),
        (["--shapes", "images:1x3x64"], 2, "has rank 3 but input 'images'"),
        (["--shapes", "images:1x3x96x96"], 2, "fixes it at 64"),
        (["--shapes", "images:2x3x64x64"], 2, "validation gate"),
        (["--dla-core", "0"], 1, "has no DLA"),
        (["--workspace", "4000"], 1, "must be below build_memory_cap_mib"),
    ],
)
def test_override_errors_name_the_input_and_the_fix(
    extra: list[str], code: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", str(CLS_BUNDLE), *FP32, "--cache-dir", str(tmp_path), *extra]
    got, _, err = _run(capsys, *argv)
    assert got == code and needle in err and "fix:" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("shapes-cls")]


def test_shape_syntax_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["build", str(CLS_BUNDLE), *FP32, "--cache-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--shapes", "images=1x3"])
    assert exc.value.code == 2 and "NAME:DxDx" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--min-shapes", "images:1x3x64x64"])
    assert exc.value.code == 2 and "give min, opt and max" in capsys.readouterr().err


def test_inspect_shows_io_shapes_from_an_onnx(
    plain: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = CLS_BUNDLE / "model.onnx"  # inside its bundle: the bundle's own cache entry
    code, out, err = _run(capsys, "inspect", str(onnx), *FP32, "--cache-dir", str(cache), "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout is one JSON document; the build's progress went to stderr
    assert doc["artifact"] == str(plain) and doc["source"] == "onnx"
    (inp,) = doc["inputs"]
    assert inp["name"] == "images" and inp["shape"] == ["batch", 3, 64, 64]
    assert inp["dtype"] == "float32" and inp["dynamic_axes"] == [0]
    assert inp["profile"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert doc["outputs"][0]["name"] == "logits"
    code, out, _ = _run(capsys, "inspect", str(plain))
    assert code == 0
    assert "MIN / OPT / MAX" in out and "?x3x64x64" in out and "4x3x64x64" in out


def test_bare_onnx_is_built_on_the_fly_and_runs(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = tmp_path / "cls.onnx"  # no model.yaml here: a generated raw bundle
    shutil.copyfile(CLS_BUNDLE / "model.onnx", onnx)
    tensor = tmp_path / "t.npy"
    np.save(tensor, np.zeros((1, 3, 64, 64), np.float32))
    argv = ["infer", str(onnx), str(tensor), *FP32, "--cache-dir", str(cache), "--json"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "onnx" and doc["results"][0]["outputs"] == {"logits": [1, 4]}
    assert '"stage": "build"' in err  # progress on stderr
    assert (cache / "onnx-bundles").is_dir()
    image = sorted(CLS_HELDOUT.glob("*.jpg"))[0]
    code, out, _ = _run(capsys, "infer", str(onnx), str(image), *FP32, "--cache-dir", str(cache))
    assert code == 0 and "outputs {'logits': [1, 4]}" in out


def test_bare_plan_without_tensorrt_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        get_backend("tensorrt")
    except BackendUnavailable:
        pass
    else:
        pytest.skip("TensorRT is usable on this host")
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"not a plan")
    for command in ("inspect", "bench", "infer"):
        extra = [str(tmp_path / "x.npy")] if command == "infer" else []
        code, _, err = _run(capsys, command, str(plan), *extra)
        assert code == 1
        assert "TensorRT is needed to load a plan file" in err and "fix:" in err
        assert "python3-libnvinfer" in err


class _StagedRunner:
    """A real ONNX Runtime runner that also reports stage times as a TensorRT runner with CUDA
    events would (the split's aggregation; the TensorRT timing itself needs a GPU)."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def inputs(self) -> Any:
        return self.inner.inputs

    def activate(self) -> None:
        self.inner.activate()

    def deactivate(self) -> None:
        self.inner.deactivate()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self.inner.infer(feeds)

    def last_stage_ms(self) -> Mapping[str, float]:
        return {"h2d": 0.01 * self.calls, "compute": 1.0, "d2h": 0.02}


class _StagedBackend:
    def __init__(self) -> None:
        self.inner = get_backend("onnxruntime", onnx_files=ONNX_FILES)

    def runner(self, artifact_dir: Path, main_file: str, **kwargs: Any) -> Any:
        return _StagedRunner(self.inner.runner(artifact_dir, main_file, **kwargs))


def test_bench_split_where_the_runner_measures_it(plain: Path) -> None:
    artifact = load_artifact(plain)
    result = run_bench(
        artifact,
        _StagedBackend(),  # type: ignore[arg-type]
        batch=1,
        streams=2,
        seconds=0.2,
        warmup=2,
        threads=1,
    )
    split = result["split"]
    assert split["measured"] is True
    assert split["compute"]["min"] == split["compute"]["max"] == 1.0
    assert split["d2h"]["median"] == 0.02 and split["h2d"]["max"] > split["h2d"]["min"] > 0


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in ("bench", "inspect", "infer", "build"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: auto)" in text  # --profile
        assert "--shapes NAME:DxD" in text and "--save-engine" in text
        assert "(default: None)" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "measure time (default: 5.0)" in text and "(default: 10)" in text
