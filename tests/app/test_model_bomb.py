"""A model bomb (294 KB of ONNX whose ``ConstantOfShape`` makes a 16000×16000 int64 tensor) pushed
to the daemon's build paths: the OTA build hook and the cold-start engine preparation. The
whole build runs in the memory-capped child, which runs out of memory and is refused with a
typed :class:`BuildFailed` (``out_of_memory``); this process (the daemon's side of those calls)
grows by far less than 128 MiB at its peak, measured from ``/proc/self/status`` with the peak
(VmHWM) reset first. The daemon-side bundle code is also shown never to parse a model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.app.engines import EnginePreparer
from agent.app.events import EventBus
from agent.app.ota_adapters import engine_build_hook
from agent.config.device import DeviceProfile
from agent.config.model import ModelRef
from agent.core.errors import BuildFailed
from agent.engine.bundle import read_bundle_files, served_bundle
from agent.engine.cache import Artifact
from agent.ota.verify import check_bundle
from tests.assets import CLS_CALIB
from tests.helpers.model_bomb import bomb_bundle
from tests.helpers.ota_support import file_payload, manifest_for

#: the issue's bound on the daemon's peak growth while a bomb is rejected
PEAK_GROWTH_MIB = 128
#: a smaller cap than the cpu profile's 2048 MiB: the bomb is refused sooner, same code path
CAP_MIB = 1024


def _status(field: str) -> int:
    """``field`` (VmRSS, VmHWM) of this process in KiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakWatch:
    """This process's peak resident memory over a block: VmHWM reset through
    ``/proc/self/clear_refs`` where the kernel allows it, and VmRSS sampled every 20 ms."""

    def __init__(self) -> None:
        self.before_kib = 0
        self.sampled_kib = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.sampled_kib = max(self.sampled_kib, _status("VmRSS"))

    def __enter__(self) -> PeakWatch:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # reset the peak resident set size (VmHWM)
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.before_kib = _status("VmRSS")
        self.sampled_kib = self.before_kib
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_mib(self) -> float:
        peak = max(self.sampled_kib, _status("VmHWM") if self.hwm_reset else 0)
        return (peak - self.before_kib) / 1024.0


@pytest.fixture
def capped(cpu_profile: DeviceProfile) -> DeviceProfile:
    build = cpu_profile.build.model_copy(update={"build_memory_cap_mib": CAP_MIB})
    return cpu_profile.model_copy(update={"build": build})


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    return bomb_bundle(tmp_path / "bomb", version=2)


@pytest.fixture
def no_parse(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any ONNX parse in this process fails the test (the children are other processes)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the daemon parsed a model")

    for module in ("agent.engine.bundle", "agent.engine.modelcheck", "agent.engine.onnxfiles"):
        monkeypatch.setattr(f"{module}.load_model", refuse, raising=False)
    monkeypatch.setattr("agent.engine.onnxgraph.load_model", refuse)
    monkeypatch.setattr("agent.engine.output_softmax.output_is_softmax", refuse)
    yield


def _refused(build: Callable[[], object]) -> tuple[BuildFailed, float]:
    with PeakWatch() as watch, pytest.raises(BuildFailed) as info:
        build()
    return info.value, watch.growth_mib


def _assert_bomb_refused(err: BuildFailed, growth_mib: float) -> None:
    assert err.out_of_memory, str(err)
    assert err.memory_cap_mib == CAP_MIB
    assert "ran out of memory" in err.message and "stage:" in err.message
    assert err.fix and "model bomb" in err.fix
    assert growth_mib < PEAK_GROWTH_MIB, f"the daemon's side grew {growth_mib:.0f} MiB"


@pytest.mark.timeout(120)
def test_ota_bomb_is_refused_in_the_child(
    capped: DeviceProfile, bomb: Path, tmp_path: Path, no_parse: None
) -> None:
    # the post-download checks pass: the bundle is well formed; its ONNX is read in a child
    with PeakWatch() as watch:
        check_bundle(bomb, manifest_for(bomb, 2, file_payload(bomb)))
    assert watch.growth_mib < PEAK_GROWTH_MIB
    build = engine_build_hook(
        capped, cache_dir=tmp_path / "cache", calib_dirs={"shapes-cls": CLS_CALIB},
        gate_seconds=0.2,
    )  # fmt: skip
    err, growth = _refused(lambda: build(bomb))
    _assert_bomb_refused(err, growth)


@pytest.mark.timeout(120)
def test_cold_start_bomb_is_refused_in_the_child(
    capped: DeviceProfile, bomb: Path, tmp_path: Path, no_parse: None
) -> None:
    stages: list[str] = []

    def printer(stage: str, fraction: float, message: str) -> None:
        stages.append(stage)

    preparer = EnginePreparer(EventBus(), lambda cfg: tmp_path / "cache", lambda: printer)
    ref = ModelRef(name="shapes-cls", bundle=bomb, calib_dir=CLS_CALIB, precision="fp32")
    cfg = SimpleNamespace(models=[ref])
    err, growth = _refused(lambda: preparer.prepare(cfg, capped, None, ["shapes-cls"]))  # type: ignore[arg-type]
    _assert_bomb_refused(err, growth)
    assert "prepare" in stages, "progress flows back from the child"


def test_served_bundle_takes_the_settled_softmax_from_the_manifest(
    tmp_path: Path, no_parse: None
) -> None:
    bundle = bomb_bundle(tmp_path / "b")  # output.softmax: auto in model.yaml; never parsed here
    assert read_bundle_files(bundle).config.output.softmax == "auto"
    for settled in ("none", "apply"):
        manifest = {
            "bundle": {"onnx_sha256": "ab" * 32, "config": {"output": {"softmax": settled}}}
        }
        served = served_bundle(bundle, Artifact(tmp_path, manifest))
        assert served.config.output.softmax == settled
        assert served.onnx_sha256 == "ab" * 32
        assert served.labels
