"""The ``metrics/2`` contract: base-unit fields beside the deprecated ``metrics/1`` ones, the
payload validation, and the registry reading either major into the same record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.comms.payloads import (
    SCHEMA_METRICS,
    SCHEMA_METRICS_V1,
    metrics_payload,
    validate_metrics,
)
from agent.core.errors import CommsError
from agent.fleet.registry.wire import BadMessage, parse_metrics, require_envelope
from tests.helpers.fleet_messages import metrics_body

MIB = 2**20


def _v2_twins(v1: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics/2`` fields the daemon sends for the figures of a ``metrics/1`` body."""
    mem = v1["memory"]
    return {
        "uptime_seconds": v1["uptime_s"],
        "sources": {
            name: {
                **{k: v for k, v in src.items() if k != "latency_ms"},
                "latency_seconds": {
                    "0.5": src["latency_ms"]["p50"] / 1000,
                    "0.99": src["latency_ms"]["p99"] / 1000,
                },
            }
            for name, src in v1["sources"].items()
        },
        "stage_seconds": {k: {"0.5": v / 1000} for k, v in v1["stages_ms"].items()},
        "power_watts": v1["power_w"],
        "power_rail_watts": {"VDD_IN": v1["power_w"], "VDD_SOC": 1.5},
        "temperature_celsius": dict(v1["temperatures_c"]),
        "memory": {
            "used_bytes": round(mem["used_mib"] * MIB),
            "total_bytes": round(mem["total_mib"] * MIB),
            "used_ratio": mem["used_pct"] / 100,
        },
        "swap": {"used_bytes": 0, "total_bytes": 2 * 1024 * MIB},
        "gpu_load_ratio": v1["gpu_load_pct"] / 100,
        "cpu_load_ratio": 0.35,
        "fps_per_watt": v1["fps_per_w"],
        "throttled": {"thermal": False, "oc1": True},
        "power_mode": "MAXN",
        "model": v1["model"],
        "models": v1["models"],
        "governor": v1["governor"],
        "comms": {**v1["comms"], "expired": 0},
        "ota": {"state": "active", "op": "update", "model": "det", "version": 3},
    }


def _v2_full(v1: dict[str, Any]) -> dict[str, Any]:
    """What the daemon sends: every ``metrics/1`` field kept beside its ``metrics/2`` twin."""
    twins = _v2_twins(v1)
    sources = {n: {**v1["sources"][n], **s} for n, s in twins["sources"].items()}
    memory = {**v1["memory"], **twins["memory"]}
    return {**v1, **twins, "sources": sources, "memory": memory}


def _record(body: dict[str, Any], schema: str) -> Any:
    payload = metrics_payload(body, device="cam-1", boot=4, seq=9, ts=1.7e9, schema=schema)
    doc = require_envelope(json.loads(payload), "metrics", "cam-1")
    assert doc["schema"] == schema
    return parse_metrics(doc)


def test_v2_payload_validates_the_new_fields_and_keeps_the_v1_ones() -> None:
    body = _v2_full(metrics_body())
    doc = json.loads(metrics_payload(body, device="cam-1", boot=4, seq=9, ts=1.7e9))
    assert doc["schema"] == SCHEMA_METRICS == "edge-agent/metrics/2"
    assert doc["power_w"] == doc["power_watts"] == 7.3  # deprecated twin kept for one major
    assert doc["memory"]["used_mib"] == 3120.0 and doc["memory"]["used_bytes"] == 3120 * MIB
    assert doc["sources"]["cam0"]["latency_seconds"] == {"0.5": 0.021, "0.99": 0.0402}
    assert doc["power_rail_watts"]["VDD_SOC"] == 1.5 and doc["throttled"]["oc1"] is True
    assert doc["power_mode"] == "MAXN" and doc["ota"]["state"] == "active"
    # unknown readings are left out, not null or 0: the new maps too
    sparse = json.loads(metrics_payload({"sources": {}}, device="d", boot=1, seq=1, ts=1.0))
    new = {"stage_seconds", "power_watts", "power_rail_watts", "temperature_celsius", "swap"}
    assert not new & set(sparse) and "memory" not in sparse, sparse


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"gpu_load_ratio": 63.0}, "gpu_load_ratio"),  # a percent where a ratio belongs
        ({"cpu_load_ratio": -0.1}, "cpu_load_ratio"),
        ({"stage_seconds": {"infer": {"p50": 0.01}}}, "stage_seconds"),  # quantile as "0.5"
        ({"power_rail_watts": {"VDD_IN": -1.0}}, "power_rail_watts"),
        ({"swap": {"used_bytes": 1}}, "swap"),
        ({"throttled": {"thermal": "yes"}}, "throttled"),
        ({"power_watt": 1.0}, "power_watt"),  # a typo is refused
    ],
)
def test_v2_validation_refuses_wrong_units_and_typos(patch: dict[str, Any], where: str) -> None:
    with pytest.raises(CommsError, match=where):
        validate_metrics({**_v2_full(metrics_body()), **patch})


def test_unknown_schema_is_refused_by_the_builder() -> None:
    with pytest.raises(CommsError, match="metrics schema"):
        metrics_payload({}, device="d", boot=1, seq=1, ts=1.0, schema="edge-agent/metrics/3")


def test_registry_reads_v1_v2_and_v2_only_into_the_same_record() -> None:
    v1 = metrics_body()
    old = _record(v1, SCHEMA_METRICS_V1)
    full = _record(_v2_full(v1), SCHEMA_METRICS)
    bare = _record(_v2_twins(v1), SCHEMA_METRICS)  # a later major without the deprecated fields
    assert old == full == bare
    snap = bare.snapshot
    assert snap.power_w == 7.3 and snap.memory_used_pct == 40.9 and snap.gpu_load_pct == 61.0
    assert snap.uptime_s == 3600.5 and snap.fps_per_w == 2.04
    assert snap.temperatures_c == {"cpu": 51.2, "gpu": 49.8}
    assert snap.sources["cam0"].latency_p50_ms == 21.0
    assert snap.sources["cam0"].latency_p99_ms == 40.2


def test_registry_refuses_an_unknown_metrics_major() -> None:
    doc = json.loads(metrics_payload(metrics_body(), device="cam-1", boot=4, seq=9, ts=1.7e9))
    doc["schema"] = "edge-agent/metrics/3"
    with pytest.raises(BadMessage) as err:
        require_envelope(doc, "metrics", "cam-1")
    assert err.value.reason == "unknown_schema"
