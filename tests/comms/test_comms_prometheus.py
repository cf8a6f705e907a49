"""The Prometheus endpoint over real loopback HTTP: the ``metrics/2`` body's figures under the
naming guide's names, unknown readings absent (not 0), and ``promtool check metrics`` clean."""

from __future__ import annotations

import re
import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.comms.payloads import validate_metrics
from agent.comms.prometheus import PrometheusExporter
from agent.config.agent import PrometheusConfig
from agent.core.errors import CommsError
from tests.helpers.broker import free_port
from tests.helpers.promtool import check_metrics

MODEL = {"name": "det", "version": 3, "precision": "int8", "engine_hash": "ab12"}
METRICS: dict[str, Any] = {
    "uptime_s": 12.5,
    "uptime_seconds": 12.5,
    "sources": {
        "cam0": {
            "state": "streaming",
            "fps": 14.8,
            "latency_ms": {"p50": 21.0, "p99": 41.0},
            "latency_seconds": {"0.5": 0.021, "0.99": 0.041},
            "drops": 3,
            "frames": 180,
        },
        "cam1": {"state": "stalled", "fps": 0.0, "drops": 0, "frames": 0},
    },
    "stages_ms": {"preprocess": 1.2, "infer": 9.5},
    "stage_seconds": {"preprocess": {"0.5": 0.0012}, "infer": {"0.5": 0.0095, "0.99": 0.02}},
    "power_w": 7.25,
    "power_watts": 7.25,
    "power_rail_watts": {"VDD_IN": 7.25, "VDD_CPU_GPU_CV": 3.1, "VDD_SOC": 1.4},
    "temperatures_c": {"cpu": 51.0, "gpu": 49.5},
    "temperature_celsius": {"cpu": 51.0, "gpu": 49.5},
    "memory": {
        "used_mib": 3100.0,
        "total_mib": 7620.0,
        "used_pct": 40.7,
        "used_bytes": 3100 * 2**20,
        "total_bytes": 7620 * 2**20,
        "used_ratio": 0.407,
    },
    "swap": {"used_bytes": 0, "total_bytes": 2**30},
    "gpu_load_pct": 63.0,
    "gpu_load_ratio": 0.63,
    "cpu_load_ratio": 0.25,
    "fps_per_w": 2.04,
    "fps_per_watt": 2.04,
    "throttled": {"oc1": False, "thermal": True},
    "power_mode": "15W",
    "model": MODEL,
    "models": {"det": MODEL},
    "governor": {"state": "normal", "workers": 2, "fps_cap": 15.0, "builds_allowed": True},
    "comms": {"spooled": 4, "dropped": 1, "sent": 97, "expired": 0},
    "ota": {"state": "probation", "op": "update", "model": "det", "version": 4},
}
UNKNOWN: dict[str, Any] = {
    "uptime_seconds": 1.0,
    "sources": {},
    "power_rail_watts": {},
    "temperature_celsius": {},
    "throttled": {},
    "governor": {"state": "normal", "workers": 1, "builds_allowed": True},
}
"""A host with no power rails, no readable zone, no memory figures, no model, no MQTT."""


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _scrape(body: dict[str, Any]) -> str:
    exp = PrometheusExporter(PrometheusConfig(enabled=True, port=free_port()), device="dev1")
    exp.start()
    try:
        exp.update(body)
        return _get(exp.port)
    finally:
        exp.close()


def _check_names(text: str) -> None:
    """The naming guide: counters end in ``_total``, base units only, float quantiles."""
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("edge_agent_"), fam.name
        assert fam.documentation, f"{fam.name} has no HELP"
        assert not re.search(r"_(ms|mib|mb|pct|percent|s)(_|$)", fam.name), fam.name
        for sample in fam.samples:
            if fam.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
            if "quantile" in sample.labels:
                assert 0.0 <= float(sample.labels["quantile"]) <= 1.0, sample.labels


@pytest.mark.timeout(30)
def test_endpoint_serves_the_metrics_payload_figures() -> None:
    validate_metrics(METRICS)  # the same body is a valid MQTT metrics/2 payload
    exp = PrometheusExporter(
        PrometheusConfig(enabled=True, port=free_port()), device="dev1", clock=lambda: 1.76e9
    )
    exp.start()
    try:
        assert _get(exp.port) == ""  # nothing before the first body
        exp.update(METRICS)
        text = _get(exp.port)
        expected = [
            'edge_agent_source_fps{source="cam0"} 14.8',
            'edge_agent_source_latency_seconds{quantile="0.99",source="cam0"} 0.041',
            'edge_agent_source_drops_total{source="cam0"} 3.0',
            'edge_agent_source_frames_total{source="cam0"} 180.0',
            'edge_agent_source_state{source="cam1",state="stalled"} 1.0',
            'edge_agent_stage_seconds{quantile="0.5",stage="infer"} 0.0095',
            "edge_agent_power_watts 7.25",
            'edge_agent_power_rail_watts{rail="VDD_SOC"} 1.4',
            'edge_agent_temperature_celsius{zone="gpu"} 49.5',
            "edge_agent_memory_used_ratio 0.407",
            "edge_agent_gpu_load_ratio 0.63",
            "edge_agent_cpu_load_ratio 0.25",
            "edge_agent_fps_per_watt 2.04",
            'edge_agent_throttled{reason="thermal"} 1.0',
            'edge_agent_throttled{reason="oc1"} 0.0',
            'edge_agent_power_mode_info{mode="15W"} 1.0',
            'edge_agent_model_info{engine_hash="ab12",model="det",precision="int8",version="3"} 1.0',  # noqa: E501
            'edge_agent_governor_state{state="normal"} 1.0',
            "edge_agent_governor_workers 2.0",
            "edge_agent_governor_builds_allowed 1.0",
            'edge_agent_ota_state{state="probation"} 1.0',
            "edge_agent_spool_messages 4.0",
            "edge_agent_spool_dropped_total 1.0",
            "edge_agent_mqtt_sent_total 97.0",
            "edge_agent_uptime_seconds 12.5",
            "edge_agent_metrics_timestamp_seconds 1.76e+09",
            "# TYPE edge_agent_mqtt_sent_total counter",
        ]
        missing = [line for line in expected if line not in text]
        assert not missing, f"missing {missing} in\n{text}"
        values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert values["edge_agent_memory_used_bytes"] == 3100 * 2**20
        assert values["edge_agent_swap_total_bytes"] == 2**30
        assert values["edge_agent_swap_used_bytes"] == 0  # no swap used: a real 0
        assert "python_gc" not in text  # its own registry, not the global one
        exp.update({"sources": {"cam0": {"state": "streaming", "fps": 1.0}}})
        text = _get(exp.port)
        assert "cam1" not in text and "power_watts" not in text  # gone readings go away
    finally:
        exp.close()
    with pytest.raises(OSError):
        _get(exp.port)  # closed: the port no longer answers
    exp.close()  # idempotent


@pytest.mark.timeout(30)
def test_unknown_readings_are_absent_not_zero() -> None:
    validate_metrics(UNKNOWN)
    text = _scrape(UNKNOWN)
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert "edge_agent_power_watts" not in text  # no rails: no sample at all, not 0
    assert not any("power" in n or "temperature" in n or "memory" in n for n in names), names
    assert not any(n.startswith(("edge_agent_spool", "edge_agent_mqtt")) for n in names)
    assert "edge_agent_governor_fps_cap" not in names  # uncapped: absent
    assert names >= {"edge_agent_uptime_seconds", "edge_agent_governor_workers"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [METRICS, UNKNOWN], ids=["realistic", "unknown"])
def test_names_follow_the_guide_and_promtool_passes(body: dict[str, Any]) -> None:
    text = _scrape(body)
    _check_names(text)
    check_metrics(text)


def test_port_in_use_is_a_comms_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        exp = PrometheusExporter(PrometheusConfig(enabled=True, port=port), device="dev1")
        with pytest.raises(CommsError, match=r"metrics\.port"):
            exp.start()
