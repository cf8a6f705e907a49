"""The daemon's ``metrics/2`` body from real typed stats and monitor readings: valid on MQTT,
served by the Prometheus exporter under the same figures, unknown readings absent."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app.metrics import metrics_body, ota_figures, sample_figures
from agent.comms.payloads import validate_metrics
from agent.comms.prometheus import PrometheusExporter
from agent.config.agent import PrometheusConfig
from agent.monitor.sample import MemorySample, Sample
from agent.pipeline.stats import PipelineStats, SourceFigures, StageLatency
from tests.helpers.broker import free_port
from tests.helpers.promtool import check_metrics

MIB = 2**20
ORIN = Sample(
    ts=1.0,
    source="jetson-sysfs",
    power_w={"VDD_IN": 9.5, "VDD_CPU_GPU_CV": 4.2, "VDD_SOC": None},
    board_power_w=9.5,
    temps_c={"cpu": 55.0, "gpu": 53.5, "tj": None},
    memory=MemorySample(
        total_mib=7620.0,
        used_mib=3000.0,
        available_mib=4000.0,
        swap_total_mib=3810.0,
        swap_used_mib=12.0,
    ),
    gpu_load_pct=62.0,
    cpu_load_pct=31.0,
    power_mode="15W",
    throttling={"oc1": True, "thermal": False},
)
HOST = Sample(ts=1.0, source="host", memory=MemorySample(total_mib=None))
"""A host with no rails, no readable zone, no memory figures."""


def _stats() -> PipelineStats:
    lat = {"infer": StageLatency(4.0, 6.0), "total": StageLatency(9.0, 15.0)}
    cam = SourceFigures("streaming", 12.5, 40, 0, 2, 1, 0, 0)
    return PipelineStats(
        model="det", precision="int8", fps_cap=None, shedding=False, engine="e1", workers=2,
        mean_batch=1.0, nan_outputs=0, swaps=0, worker_restarts=0, sources={"cam": cam},
        latency_ms=lat, sink_errors=0,
    )  # fmt: skip


def _body(sample: Sample) -> dict[str, Any]:
    info = {"name": "det", "version": 2, "precision": "int8", "engine_hash": "ab"}
    body = metrics_body(30.0, {"det": _stats()}, {"det": info}, None)
    body.update(sample_figures(sample))
    ota = ota_figures({"id": "x", "op": "update", "state": "active", "model": "det", "version": 2})
    assert ota is not None
    body["ota"] = ota
    return body


def _scrape(body: dict[str, Any]) -> str:
    exp = PrometheusExporter(PrometheusConfig(enabled=True, port=free_port()), device="d1")
    exp.start()
    try:
        exp.update(body)
        with urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    finally:
        exp.close()


def _values(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_monitor_reading_becomes_v2_fields_beside_the_v1_ones() -> None:
    body = validate_metrics(_body(ORIN))
    assert body["power_w"] == body["power_watts"] == 9.5
    assert body["power_rail_watts"] == {"VDD_IN": 9.5, "VDD_CPU_GPU_CV": 4.2}  # unknown rail out
    assert body["temperature_celsius"] == body["temperatures_c"] == {"cpu": 55.0, "gpu": 53.5}
    mem = body["memory"]
    assert mem["used_bytes"] == 3000 * MIB and mem["total_bytes"] == 7620 * MIB
    assert mem["used_ratio"] == pytest.approx(mem["used_pct"] / 100)
    assert body["swap"] == {"used_bytes": 12 * MIB, "total_bytes": 3810 * MIB}
    assert body["gpu_load_ratio"] == 0.62 and body["cpu_load_ratio"] == 0.31
    assert body["throttled"] == {"oc1": True, "thermal": False} and body["power_mode"] == "15W"
    assert body["sources"]["cam"]["latency_seconds"] == {"0.5": 0.009, "0.99": 0.015}
    assert body["ota"] == {"state": "active", "op": "update", "model": "det", "version": 2}


def test_the_same_figures_on_mqtt_and_prometheus() -> None:
    body = validate_metrics(_body(ORIN))
    got = _values(_scrape(body))
    assert got["edge_agent_power_watts"] == body["power_watts"]
    assert got["edge_agent_power_rail_watts{rail=VDD_CPU_GPU_CV}"] == 4.2
    assert got["edge_agent_memory_used_bytes"] == body["memory"]["used_bytes"]
    assert got["edge_agent_swap_used_bytes"] == body["swap"]["used_bytes"]
    assert got["edge_agent_cpu_load_ratio"] == body["cpu_load_ratio"]
    assert got["edge_agent_source_latency_seconds{quantile=0.99,source=cam}"] == 0.015
    assert got["edge_agent_stage_seconds{quantile=0.5,stage=infer}"] == 0.004
    assert got["edge_agent_source_frames_total{source=cam}"] == 40
    assert (
        got["edge_agent_throttled{reason=oc1}"] == 1
        and got["edge_agent_throttled{reason=thermal}"] == 0
    )
    assert got["edge_agent_power_mode_info{mode=15W}"] == 1
    assert got["edge_agent_ota_state{state=active}"] == 1
    assert got["edge_agent_model_info{engine_hash=ab,model=det,precision=int8,version=2}"] == 1


def test_a_host_without_rails_exports_no_power_at_all() -> None:
    body = validate_metrics(_body(HOST))
    assert not {"power_w", "power_watts", "memory", "swap", "gpu_load_ratio"} & set(body)
    got = _values(_scrape(body))
    assert not [k for k in got if "power" in k or "memory" in k or "swap" in k], got
    assert got["edge_agent_uptime_seconds"] == 30.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sample", [ORIN, HOST], ids=["orin", "host"])
def test_promtool_accepts_the_daemons_body(sample: Sample) -> None:
    check_metrics(_scrape(validate_metrics(_body(sample))))


def test_ota_figures_need_a_state() -> None:
    assert ota_figures({"op": "update"}) is None
    assert ota_figures({"state": "failed", "reason": "probation_slow", "version": True}) == {
        "state": "failed",
        "reason": "probation_slow",
    }
