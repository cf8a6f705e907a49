"""The Prometheus endpoint over real loopback HTTP."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from agent.comms.prometheus import PrometheusExporter
from agent.config.agent import PrometheusConfig
from agent.core.errors import CommsError
from tests.helpers.broker import free_port

METRICS = {
    "uptime_s": 12.5,
    "sources": {
        "cam0": {
            "state": "running",
            "fps": 14.8,
            "latency_ms": {"p50": 21.0, "p90": 30.5, "p99": 41.0},
            "drops": 3,
            "frames": 180,
        },
        "cam1": {"state": "stalled", "fps": 0.0},
    },
    "stages_ms": {"preprocess": 1.2, "infer": 9.5},
    "power_w": 7.25,
    "temperatures_c": {"cpu": 51.0, "gpu": 49.5},
    "memory": {"used_mib": 3100.0, "total_mib": 7620.0},
    "gpu_load_pct": 63.0,
    "fps_per_w": 2.04,
    "model": {"name": "det", "version": 3, "precision": "int8", "engine_hash": "ab12"},
    "governor": {"state": "normal", "workers": 2},
}


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.timeout(30)
def test_endpoint_serves_the_metrics_payload_figures() -> None:
    exp = PrometheusExporter(PrometheusConfig(enabled=True, port=free_port()), device="dev1")
    exp.start()
    try:
        exp.update(METRICS)
        text = _get(exp.port)
        assert 'edge_agent_source_fps{source="cam0"} 14.8' in text
        assert 'edge_agent_source_latency_ms{quantile="p99",source="cam0"} 41.0' in text
        assert 'edge_agent_source_drops{source="cam0"} 3.0' in text
        assert 'edge_agent_source_state{source="cam1",state="stalled"} 1.0' in text
        assert 'edge_agent_stage_ms{stage="infer"} 9.5' in text
        assert "edge_agent_power_watts 7.25" in text
        assert 'edge_agent_temperature_celsius{zone="gpu"} 49.5' in text
        assert "edge_agent_memory_used_mib 3100.0" in text
        assert "edge_agent_gpu_load_percent 63.0" in text
        assert "edge_agent_fps_per_watt 2.04" in text
        assert (
            'engine_hash="ab12"' in text and 'edge_agent_governor_state{state="normal"} 1.0' in text
        )
        assert "python_gc" not in text  # its own registry, not the global one
        exp.update({"sources": {"cam0": {"state": "running", "fps": 1.0}}})
        text = _get(exp.port)
        assert "cam1" not in text  # stale series go away
    finally:
        exp.close()
    with pytest.raises(OSError):
        _get(exp.port)  # closed: the port no longer answers
    exp.close()  # idempotent


def test_port_in_use_is_a_comms_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        exp = PrometheusExporter(PrometheusConfig(enabled=True, port=port), device="dev1")
        with pytest.raises(CommsError, match=r"metrics\.port"):
            exp.start()
