"""Latency statistics and the human report of ``edge-agent bench``, field for field with trtexec's
performance summary (``Throughput: N qps``, ``Latency: min = ..., max = ..., mean = ...,
median = ..., percentile(90%) = ...``, ``H2D Latency``, ``GPU Compute Time``, ``D2H Latency``).

Runners that can time their own stages (TensorRT with CUDA events around the host-to-device
copies, ``execute_async_v3`` and the device-to-host copies) expose :class:`StageTimed`; the
others (ONNX Runtime on the CPU, where inputs and outputs stay in host memory) report compute
only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from agent.cli.common import format_table

__all__ = ["STAGES", "StageTimed", "latency_stats", "print_bench", "split_json"]

#: the stages a :class:`StageTimed` runner reports, in trtexec's order
STAGES = ("h2d", "compute", "d2h")
_NOT_SEPARATE = (
    "transfers are not separate: this runner (ONNX Runtime on the CPU) reads and writes host "
    "memory, so compute is the whole inference"
)


@runtime_checkable
class StageTimed(Protocol):
    """A runner that measures its last inference's stages (milliseconds, keys :data:`STAGES`;
    on a zero-copy Jetson the copies are 0)."""

    def last_stage_ms(self) -> Mapping[str, float] | None: ...


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max / std (population) of ``samples_ms``;
    ``p50`` repeats the median for readers of the older report."""
    if not samples_ms:
        keys = ("min", "mean", "median", "p50", "p90", "p95", "p99", "max", "std")
        return dict.fromkeys(keys, 0.0)
    ms = np.asarray(samples_ms, dtype=np.float64)
    median = float(np.percentile(ms, 50))
    out = {
        "min": float(ms.min()),
        "mean": float(ms.mean()),
        "median": median,
        "p50": median,
        "p90": float(np.percentile(ms, 90)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "std": float(ms.std()),
    }
    return {k: round(v, 4) for k, v in out.items()}


def split_json(
    stage_samples: Mapping[str, Sequence[float]], latency_ms: Sequence[float]
) -> dict[str, Any]:
    """The H2D / compute / D2H split: measured per stage, or compute only with why."""
    if all(stage_samples.get(s) for s in STAGES):
        return {"measured": True, **{s: latency_stats(stage_samples[s]) for s in STAGES}}
    return {"measured": False, "compute": latency_stats(latency_ms), "note": _NOT_SEPARATE}


def _line(label: str, stats: Mapping[str, float]) -> str:
    return (
        f"{label}min = {stats['min']} ms, max = {stats['max']} ms, mean = {stats['mean']} ms, "
        f"median = {stats['median']} ms, p95 = {stats['p95']} ms, p99 = {stats['p99']} ms, "
        f"std-dev = {stats['std']} ms"
    )


def print_bench(result: Mapping[str, Any]) -> None:
    """The human report (stdout)."""
    thr = result["throughput"]
    source = result.get("source", "artifact")
    print(
        f"model:      {result['artifact']} ({result['backend']}, {result['precision']}, {source})"
    )
    print(
        f"input:      {result['input']['name']} {result['input']['shape']} "
        f"{result['input']['dtype']}; {result['streams']} stream(s), {result['seconds']} s, "
        f"{result['inferences']} inferences"
    )
    print(f"throughput: {thr['inferences_per_s']} qps, {thr['images_per_s']} images/s")
    print(_line("latency:    ", result["latency_ms"]))
    split = result["split"]
    if split["measured"]:
        for stage in STAGES:
            print(_line(f"{stage + ':':<12}", split[stage]))
        if split.get("transfers"):
            print(f"transfers:  {split['transfers']}")
    else:
        print(f"compute:    = latency ({split['note']})")
    if "layers" in result:
        print()
        rows = [
            [str(i["name"]), str(i["op_type"]), f"{i['avg_ms']:.4f}", f"{i['percent']:.1f}"]
            for i in result["layers"]
        ]
        print(format_table(["LAYER", "OP", "AVG_MS", "%"], rows))
