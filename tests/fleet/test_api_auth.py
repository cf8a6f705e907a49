"""The controller's HTTP API against a real running controller: reads are open, every POST needs
the bearer token, bodies are bounded, errors are JSON with a fix."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from agent.core.errors import EdgeAgentError
from agent.fleet.controller.auth import bearer_matches
from agent.fleet.controller.service import FleetController
from tests.helpers.broker import Broker
from tests.helpers.fleet_controller import fleet_config, request, running, write_token

FLEET = "apif"


def _error(doc: dict[str, object]) -> dict[str, str]:
    error = doc["error"]
    assert isinstance(error, dict)
    assert set(error) == {"code", "message", "fix"}
    return error  # pyright: ignore[reportUnknownVariableType]


def test_reads_are_open_and_every_post_needs_the_token(broker: Broker, tmp_path: Path) -> None:
    token_file, token = write_token(tmp_path / "secrets")
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=token_file)
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        status, health, _ = request(url, "GET", "/api/health")
        assert status == 200 and health["fleet"] == FLEET and health["instance"] == "ctl-test"
        assert health["mqtt"] == {"connected": True} and health["ok"] is True
        assert health["store"] == str(tmp_path / "fleet.db")
        assert request(url, "GET", "/api/devices")[:2] == (200, {"devices": []})
        assert request(url, "GET", "/api/rollouts")[:2] == (200, {"rollouts": []})

        pause = "/api/rollouts/0123456789ab/pause"
        status, doc, headers = request(url, "POST", pause, body=b"{}")
        assert status == 401 and _error(doc)["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "EDGE_AGENT_FLEET_TOKEN" in _error(doc)["fix"]
        for wrong in ("x" * 48, token[:-1], token + "0", ""):
            status, doc, _ = request(url, "POST", pause, body=b"{}", token=wrong)
            assert status == 401, wrong
        status, doc, _ = request(url, "POST", pause, body=b"{}", headers={"Authorization": token})
        assert status == 401  # the scheme is required

        # with the token: an unknown rollout is a 404, with a fix
        status, doc, _ = request(url, "POST", pause, body=b"{}", token=token)
        assert status == 404 and _error(doc)["code"] == "not_found" and _error(doc)["fix"]


def test_bodies_are_bounded_and_errors_are_json(broker: Broker, tmp_path: Path) -> None:
    token_file, token = write_token(tmp_path / "secrets")
    cfg = fleet_config(
        tmp_path, broker.url, fleet=FLEET, token_file=token_file, api={
            "host": "127.0.0.1", "port": 0, "token_file": str(token_file), "max_body_kib": 1
        },
    )  # fmt: skip
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        big = json.dumps({"spec": {"bundle": "/x" * 2000}}).encode()
        status, doc, _ = request(url, "POST", "/api/rollouts", body=big, token=token)
        assert status == 413 and _error(doc)["code"] == "too_large"
        # the token is checked before the body is looked at
        status, _, _ = request(url, "POST", "/api/rollouts", body=big)
        assert status == 401

        for bad in (b"{", b"[1, 2]", b"\xff\xfe", b"[" * 40 + b"]" * 40, b'"text"'):
            status, doc, _ = request(url, "POST", "/api/rollouts", body=bad, token=token)
            assert status == 400 and _error(doc)["code"] == "bad_json", bad

        for body in (
            {},
            {"spec": {"bundle": "relative/dir", "version": 2}, "key_path": "/k"},
            {"spec": {"bundle": "/b", "version": 0}, "key_path": "/k"},
            {"spec": {"bundle": "/b", "version": 2}, "key_path": "relative.key"},
            {"spec": {"bundle": "/b", "version": 2}, "key_path": "/k", "extra": 1},
            {"spec": {"bundle": "/b", "version": 2, "waves": ["50%"]}, "key_path": "/k"},
        ):
            raw = json.dumps(body).encode()
            status, doc, _ = request(url, "POST", "/api/rollouts", body=raw, token=token)
            assert status == 400 and _error(doc)["code"] == "invalid", body
            assert _error(doc)["fix"], body

        assert request(url, "GET", "/api/nothing")[0] == 404
        assert request(url, "GET", "/static/nosuch.js")[0] == 404
        assert request(url, "GET", "/api/devices/../../etc/passwd")[0] == 404
        status, doc, _ = request(url, "GET", "/api/devices/nosuch")
        assert status == 404 and _error(doc)["code"] == "not_found"
        assert request(url, "GET", "/api/rollouts/0123456789ab")[0] == 404
        status, doc, _ = request(url, "DELETE", "/api/devices")
        assert status == 405 and _error(doc)["code"] == "method_not_allowed"
        assert request(url, "GET", "/api/rollouts/0123456789ab/abort")[0] == 405
        assert request(url, "POST", "/api/health", body=b"{}", token=token)[0] == 405
        # no Content-Length on a POST
        assert _raw_post_status(url, token) == 411
        # nothing was stored by any of it
        assert request(url, "GET", "/api/rollouts")[1] == {"rollouts": []}


def _raw_post_status(url: str, token: str) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /api/rollouts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = sock.makefile("rb").readline().decode()
    return int(reply.split()[1])


def test_without_a_token_the_api_is_read_only(broker: Broker, tmp_path: Path) -> None:
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None)
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        assert request(url, "GET", "/api/health")[0] == 200
        status, doc, _ = request(url, "POST", "/api/rollouts", body=b"{}", token="a" * 32)
        assert status == 403 and _error(doc)["code"] == "read_only"
        assert "api.token_file" in _error(doc)["fix"] and "api.token_env" in _error(doc)["fix"]


def test_token_sources_are_checked_at_start(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=short)
    with pytest.raises(EdgeAgentError, match="shorter than"):
        FleetController(cfg, tmp_path).start()
    api = {"host": "127.0.0.1", "port": 0, "token_env": "FLEET_TEST_TOKEN"}
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None, api=api)
    monkeypatch.delenv("FLEET_TEST_TOKEN", raising=False)
    with pytest.raises(EdgeAgentError, match="FLEET_TEST_TOKEN"):
        FleetController(cfg, tmp_path).start()
    monkeypatch.setenv("FLEET_TEST_TOKEN", "t" * 40)
    with running(cfg, tmp_path) as ctl:
        status, doc, _ = request(ctl.api_url, "POST", "/api/rollouts", body=b"{}", token="t" * 40)
        assert status == 400 and _error(doc)["code"] == "invalid"


def test_bearer_matching() -> None:
    token = "s3cr3t-token-0123456789"
    assert bearer_matches(f"Bearer {token}", token)
    assert bearer_matches(f"bearer   {token} ", token)
    for header in (None, "", token, f"Basic {token}", f"Bearer {token}x", "Bearer", "Bearer é"):
        assert not bearer_matches(header, token)
