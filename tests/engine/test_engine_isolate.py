"""The isolated build child: memory cap, timeout, crashes and progress, with real processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from agent.core.errors import BuildFailed, ModelError
from agent.engine.isolate.launch import run_isolated
from agent.engine.isolate.protocol import is_out_of_memory_text

# Targets run in a spawned child, so they must be module-level functions.


def _allocate(progress, gib: float) -> int:
    progress("build", 0.1, "allocating")
    block = np.ones(int(gib * (1 << 30)), dtype=np.uint8)
    return int(block[-1])


def _sleep(progress, seconds: float) -> None:
    progress("build", 0.0, "sleeping")
    time.sleep(seconds)


def _exit(progress, code: int) -> None:
    os._exit(code)


def _succeed(progress, n: int) -> dict[str, int]:
    for i in range(n):
        progress("build", (i + 1) / n, f"step {i + 1}/{n}")
    return {"steps": n, "pid": os.getpid()}


def _raise_model_error(progress) -> None:
    raise ModelError("unsupported op Foo", fix="export again with opset 17")


def _raise_bad_alloc(progress) -> None:
    raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : std::bad_alloc")


def test_allocation_past_the_cap_is_out_of_memory() -> None:
    with pytest.raises(BuildFailed) as info:
        run_isolated(
            _allocate, (4.0,), memory_cap_mib=1024, timeout_s=60, workspace_mib=256, what="build"
        )
    err = info.value
    assert err.out_of_memory
    assert err.workspace_mib == 256
    assert err.memory_cap_mib == 1024
    assert "256 MiB" in str(err)
    assert "1024 MiB" in str(err)


def _grow(progress, mib_per_step: int, steps: int) -> int:
    # Touch the pages so they are resident (RSS), like a builder filling its buffers.
    blocks = []
    for i in range(steps):
        blocks.append(np.ones(mib_per_step << 20, dtype=np.uint8))
        progress("build", (i + 1) / steps, f"{(i + 1) * mib_per_step} MiB")
        time.sleep(0.05)
    return len(blocks)


def test_resident_memory_watch_kills_a_gpu_style_build() -> None:
    # Without RLIMIT_AS (as for CUDA backends) the parent's RSS watch enforces the cap.
    with pytest.raises(BuildFailed) as info:
        run_isolated(
            _grow,
            (64, 40),
            memory_cap_mib=400,
            timeout_s=60,
            workspace_mib=128,
            limit_address_space=False,
        )
    err = info.value
    assert err.out_of_memory
    assert "resident memory reached" in str(err)
    assert err.memory_cap_mib == 400


def test_timeout_kills_the_child() -> None:
    started = time.monotonic()
    with pytest.raises(BuildFailed) as info:
        run_isolated(_sleep, (60.0,), memory_cap_mib=None, timeout_s=1.5)
    assert time.monotonic() - started < 20
    assert "timeout" in str(info.value)
    assert not info.value.out_of_memory


def test_hard_exit_is_reported_with_its_code() -> None:
    with pytest.raises(BuildFailed) as info:
        run_isolated(_exit, (3,), memory_cap_mib=None, timeout_s=60)
    assert "code 3" in str(info.value)
    assert not info.value.out_of_memory


def test_success_relays_progress_and_value() -> None:
    events: list[tuple[str, float, str]] = []
    outcome = run_isolated(
        _succeed,
        (4,),
        memory_cap_mib=2048,
        timeout_s=60,
        progress=lambda s, f, m: events.append((s, f, m)),
    )
    assert outcome.value["steps"] == 4
    assert outcome.value["pid"] != os.getpid()
    assert [e[1] for e in events] == [0.25, 0.5, 0.75, 1.0]
    assert outcome.peak_rss_mib is not None and outcome.peak_rss_mib > 1


def test_edge_agent_errors_come_back_unchanged() -> None:
    with pytest.raises(ModelError, match="opset 17"):
        run_isolated(_raise_model_error, (), memory_cap_mib=None, timeout_s=60)


def test_bad_alloc_text_is_out_of_memory() -> None:
    with pytest.raises(BuildFailed) as info:
        run_isolated(_raise_bad_alloc, (), memory_cap_mib=None, timeout_s=60, workspace_mib=64)
    assert info.value.out_of_memory
    assert is_out_of_memory_text("Failed to allocate memory for requested buffer")
    assert not is_out_of_memory_text("Invalid model: unsupported op")


def test_cuda_backends_get_no_address_space_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.backends.base import BuildRequest
    from agent.engine.isolate import launch as isolate

    seen: dict[str, bool] = {}

    def fake_run_isolated(target, args, **kwargs):  # records the choice, runs nothing
        seen[args[0]] = kwargs["limit_address_space"]
        raise BuildFailed("stop here")

    monkeypatch.setattr(isolate, "run_isolated", fake_run_isolated)
    request = BuildRequest(
        onnx_path=Path("/m.onnx"), out_dir=Path("/o"), precision="int8", shapes={}, workspace_mib=64
    )
    for backend in ("tensorrt", "onnxruntime"):
        with pytest.raises(BuildFailed):
            isolate.build_isolated(backend, request, memory_cap_mib=512, timeout_s=5)
    assert seen == {"tensorrt": False, "onnxruntime": True}


def _nested(progress, n: int) -> dict[str, int]:
    """A child that runs an isolated child of its own (as the whole build from the daemon runs
    the quantize and backend-build children), relaying that child's progress."""
    inner = run_isolated(_succeed, (n,), memory_cap_mib=1024, timeout_s=60, progress=progress)
    return {"outer": os.getpid(), "inner": inner.value["pid"], "outer_ppid": os.getppid()}


def test_a_child_may_run_isolated_children_and_their_progress_flows_back() -> None:
    events: list[tuple[str, float, str]] = []
    outcome = run_isolated(
        _nested,
        (3,),
        memory_cap_mib=2048,
        timeout_s=120,
        progress=lambda s, f, m: events.append((s, f, m)),
        allow_children=True,
    )
    pids = outcome.value
    assert pids["outer_ppid"] == os.getpid()
    assert len({os.getpid(), pids["outer"], pids["inner"]}) == 3
    assert [e[1] for e in events] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]


def test_children_of_a_child_need_allow_children() -> None:
    with pytest.raises(BuildFailed, match="daemonic"):
        run_isolated(_nested, (1,), memory_cap_mib=2048, timeout_s=120)
