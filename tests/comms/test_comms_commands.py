"""Remote commands end to end over a real Mosquitto, with a fake Control; fuzzed payloads."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.comms.commands.dispatch import CommandDispatcher
from agent.comms.service import CommsService
from agent.config.broker import MqttConfig
from agent.core.errors import EdgeAgentError
from tests.helpers.broker import Broker, Collector, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto binary not installed (scripts/test.sh adds it)"
)

FLEET, DEV = "fleet1", "dev1"
BASE = f"edge/{FLEET}/{DEV}"


class FakeControl:
    """Test double of agent.comms.ports.Control that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[str] = set()
        self.reload_delay_s = 0.0
        self.frame: np.ndarray | None = np.zeros((480, 640, 3), np.uint8)
        assert self.frame is not None
        cv2.rectangle(self.frame, (100, 100), (300, 300), (0, 200, 255), -1)

    def _rec(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        self.threads.add(threading.current_thread().name)

    def config_json(self) -> dict[str, Any]:
        self._rec("config_json")
        return {"device_id": DEV, "mqtt": {"url": "mqtt://x:1", "password": "hunter2"}}

    def reload(self) -> str:
        self._rec("reload")
        time.sleep(self.reload_delay_s)
        return "reloaded 1 source"

    def set_profile(self, name: str) -> str:
        self._rec("set_profile", name)
        if name == "missing":
            raise EdgeAgentError("no profile 'missing'", fix="use one of cpu, orin-nano")
        return f"profile {name}"

    def latest_frame(self, source: str | None) -> Any:
        self._rec("latest_frame", source)
        return self.frame

    def collect_calib(self, model: str, count: int, source: str | None) -> dict[str, Any]:
        self._rec("collect_calib", (model, count, source))
        return {"saved": count, "dir": f"calib/{model}"}

    def rollback_model(self, model: str | None) -> dict[str, Any]:
        self._rec("rollback_model", model)
        return {"model": model or "det", "version": 2}


class Commander:
    """Fleet side: publishes requests and waits for responses by id."""

    def __init__(self, url: str) -> None:
        self.col = Collector(url, [f"{BASE}/cmd/response"])
        host, port = url.split("://")[1].rsplit(":", 1)
        self.pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.pub.connect(host, int(port))
        self.pub.loop_start()

    def send_raw(self, name: str, payload: bytes) -> None:
        self.pub.publish(f"{BASE}/cmd/{name}", payload, qos=1).wait_for_publish(5)

    def send(self, name: str, args: dict[str, Any] | None = None, **req: Any) -> str:
        rid = req.pop("id", None) or uuid.uuid4().hex[:10]
        doc = {"id": rid, "expires": time.time() + 30, "args": args or {}, **req}
        self.send_raw(name, json.dumps(doc).encode())
        return rid

    def responses(self) -> list[dict[str, Any]]:
        """Responses from the device (the fuzzer also writes junk on the response topic)."""
        out = []
        for m in self.col.on(f"{BASE}/cmd/response"):
            try:
                doc = m.json()
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("schema") == "edge-agent/cmd-response/1":
                out.append(doc)
        return out

    def wait(self, rid: str | None, timeout_s: float = 10, count: int = 1) -> dict[str, Any]:
        ok = self.col.wait_for(
            lambda m: sum(1 for x in self.responses() if x.get("id") == rid) >= count, timeout_s
        )
        assert ok, f"no response to {rid}; got {self.responses()}"
        return [r for r in self.responses() if r.get("id") == rid][-1]

    def close(self) -> None:
        self.pub.disconnect()
        self.pub.loop_stop()
        self.col.close()


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CommsService, FakeControl, Commander]]:
    tmp = tmp_path_factory.mktemp("cmd")
    broker = Broker(tmp / "broker").start()
    control = FakeControl()
    cfg = MqttConfig(
        enabled=True, url=broker.url, keepalive_s=5, max_payload_kib=4, reconnect_min_s=0.2
    )
    svc = CommsService(cfg, fleet=FLEET, device_id=DEV, state_dir=tmp / "s", control=control)
    svc.start()
    assert svc.client is not None and svc.client.wait_connected(10)
    time.sleep(0.2)  # subscriptions acknowledged
    cmd = Commander(broker.url)
    yield svc, control, cmd
    cmd.close()
    svc.close()
    broker.stop()


@pytest.mark.timeout(60)
def test_every_command_end_to_end(env: tuple[CommsService, FakeControl, Commander]) -> None:
    svc, control, cmd = env
    r = cmd.wait(cmd.send("ping"))
    assert r["ok"] and r["result"]["pong"] and r["result"]["boot"] == svc.boot
    assert r["schema"] == "edge-agent/cmd-response/1" and r["command"] == "ping"

    r = cmd.wait(cmd.send("get-config"))
    assert r["ok"] and r["result"]["mqtt"]["password"] == "***"  # redacted

    r = cmd.wait(cmd.send("reload"))
    assert r["ok"] and r["result"]["summary"] == "reloaded 1 source"

    r = cmd.wait(cmd.send("set-profile", {"name": "orin-nano"}))
    assert r["ok"] and ("set_profile", "orin-nano") in control.calls
    r = cmd.wait(cmd.send("set-profile", {"name": "missing"}))
    assert not r["ok"] and "no profile" in r["error"]["message"]

    r = cmd.wait(cmd.send("snapshot", {"max_bytes": 8192}))
    assert r["ok"], r
    jpeg = base64.b64decode(r["result"]["jpeg_b64"])
    assert len(jpeg) <= 8192 and jpeg[:2] == b"\xff\xd8"
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == r["result"]["width"]

    r = cmd.wait(cmd.send("calib-collect", {"model": "det", "count": 8}))
    assert r["ok"] and r["result"] == {"saved": 8, "dir": "calib/det"}
    assert ("collect_calib", ("det", 8, None)) in control.calls

    r = cmd.wait(cmd.send("rollback-model", {"model": "det"}))
    assert r["ok"] and r["result"]["version"] == 2
    # never paho's network thread: the fast lane (get-config, snapshot) and the long lane
    assert control.threads == {"edge-commands-fast", "edge-commands-long"}


@pytest.mark.timeout(60)
def test_repeated_id_answered_once_executed(
    env: tuple[CommsService, FakeControl, Commander],
) -> None:
    _, control, cmd = env
    before = sum(1 for c in control.calls if c[0] == "reload")
    rid = cmd.send("reload")
    first = cmd.wait(rid)
    cmd.send("reload", id=rid)
    again = cmd.wait(rid, count=2)
    assert again == first  # the stored response, byte for byte
    assert sum(1 for c in control.calls if c[0] == "reload") == before + 1


@pytest.mark.timeout(60)
def test_refusals_are_error_responses(env: tuple[CommsService, FakeControl, Commander]) -> None:
    svc, control, cmd = env
    n_calls = len(control.calls)
    r = cmd.wait(cmd.send("reload", id="old-1", expires=time.time() - 5))
    assert not r["ok"] and r["error"]["code"] == "expired"
    r = cmd.wait(cmd.send("reload", id="old-2", expires=None, ts=time.time() - 60, ttl_s=10))
    assert not r["ok"] and r["error"]["code"] == "expired"
    r = cmd.wait(cmd.send("self-destruct"))
    assert not r["ok"] and r["error"]["code"] == "unknown_command"
    r = cmd.wait(cmd.send("set-profile", {"name": 7}))
    assert not r["ok"] and r["error"]["code"] == "bad_args"
    r = cmd.wait(cmd.send("ping", {"unexpected": 1}))
    assert r["error"]["code"] == "bad_args"
    rid = uuid.uuid4().hex
    cmd.send_raw("ping", json.dumps({"id": rid, "args": {}}).encode())  # no expiry
    assert cmd.wait(rid)["error"]["code"] == "bad_request"
    # unreadable requests carry no id anyone could match an answer to: dropped and counted
    assert svc.dispatcher is not None
    dropped = dict(svc.dispatcher.dropped)
    cmd.send_raw("ping", b"{not json")
    cmd.send_raw("ping", b"x" * (5 * 1024))  # over max_payload_kib=4
    assert cmd.col.wait_for(
        lambda m: (
            svc.dispatcher is not None
            and svc.dispatcher.dropped["not_json"] > dropped.get("not_json", 0)
            and svc.dispatcher.dropped["too_large"] > dropped.get("too_large", 0)
        ),
        10,
    ), svc.dispatcher.dropped
    assert len(control.calls) == n_calls  # none of those reached the Control
    assert svc.status().commands_refused >= 6 and svc.status().commands_dropped >= 2


@pytest.mark.timeout(60)
def test_slow_handler_does_not_block_mqtt(
    env: tuple[CommsService, FakeControl, Commander],
) -> None:
    svc, control, cmd = env
    control.reload_delay_s = 2.0
    try:
        rid = cmd.send("reload")
        time.sleep(0.2)
        t0 = time.monotonic()
        for i in range(20):
            svc.publish_event("test.during_slow_handler", {"i": i})
        assert svc.wait_drained(1.5)  # PUBACKs flow while the handler sleeps
        assert time.monotonic() - t0 < 1.5
        assert cmd.wait(rid, timeout_s=10)["ok"]
    finally:
        control.reload_delay_s = 0.0


def test_history_persists_across_restart(tmp_path: Path) -> None:
    out: list[bytes] = []
    control = FakeControl()

    def make() -> CommandDispatcher:
        return CommandDispatcher(
            control, device=DEV, publish=out.append, state_dir=tmp_path, max_payload_bytes=4096
        )

    req = json.dumps({"id": "r1", "expires": time.time() + 60}).encode()
    first = make().handle("reload", req)
    second = make().handle("reload", req)
    assert first == second
    assert sum(1 for c in control.calls if c[0] == "reload") == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=140), st.integers(), st.none()),
        "expires": st.one_of(st.floats(), st.integers(), st.text(max_size=5)),
        "ts": st.one_of(st.floats(), st.none()),
        "ttl_s": st.one_of(st.floats(), st.integers()),
        "args": json_values,
    },
)
names = st.sampled_from(
    ["ping", "get-config", "reload", "set-profile", "snapshot", "calib-collect",
     "rollback-model", "nope", "response"]
)  # fmt: skip


@pytest.mark.timeout(120)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=names,
    body=st.one_of(
        st.binary(max_size=600),
        json_values.map(lambda v: json.dumps(v).encode()),
        request_like.map(lambda v: json.dumps(v).encode()),
    ),
)
def test_fuzzed_payloads_never_crash_or_block(
    env: tuple[CommsService, FakeControl, Commander], name: str, body: bytes
) -> None:
    svc, _, cmd = env
    cmd.send_raw(name, body)
    disp = svc.dispatcher
    assert disp is not None
    # the same bytes straight into the dispatcher: always a JSON response, never an exception
    doc = json.loads(disp.handle(name, body))
    assert doc["schema"] == "edge-agent/cmd-response/1" and isinstance(doc["ok"], bool)


@pytest.mark.timeout(60)
def test_still_answers_after_fuzzing(env: tuple[CommsService, FakeControl, Commander]) -> None:
    svc, _, cmd = env
    assert svc.status().connected
    assert cmd.wait(cmd.send("ping"), timeout_s=15)["ok"]
    assert svc.dispatcher is not None
    assert all(lane._thread is not None and lane._thread.is_alive()
               for lane in svc.dispatcher.lanes.values())  # fmt: skip
    assert svc.dispatcher.worker_errors == 0


def test_failed_and_bad_args_commands_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Every refused or failed request leaves a log line naming the command and request id,
    not only an error response."""
    disp = CommandDispatcher(
        FakeControl(), device=DEV, publish=lambda b: None, state_dir=None, max_payload_bytes=4096
    )

    def request(rid: str, args: dict[str, Any]) -> bytes:
        return json.dumps({"id": rid, "expires": time.time() + 30, "args": args}).encode()

    with caplog.at_level(logging.WARNING, logger="agent.comms.commands.dispatch"):
        failed = json.loads(disp.handle("set-profile", request("r-fail", {"name": "missing"})))
        bad = json.loads(disp.handle("set-profile", request("r-args", {"name": 7})))
    assert failed["error"]["code"] == "failed" and bad["error"]["code"] == "bad_args"
    logged = {
        (r.getMessage().split(":")[0], getattr(r, "fields", {}).get("id")) for r in caplog.records
    }
    assert ("command failed", "r-fail") in logged, caplog.records
    assert ("command refused", "r-args") in logged, caplog.records


def test_rollback_model_still_running_is_answered_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    """rollback-model through the daemon's DaemonControl: a rollback that takes longer than
    ROLLBACK_WAIT_S is answered ``queued`` (concurrent.futures.TimeoutError, which is not the
    builtin TimeoutError on Python 3.10), not reported as a failure."""
    import concurrent.futures
    from types import SimpleNamespace

    from agent.app import control as app_control
    from agent.config.agent import AgentConfig

    cfg = AgentConfig.model_validate(
        {"device_id": DEV, "fleet": FLEET, "models": [{"name": "det", "bundle": "b"}]}
    )
    pending: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
    asked: list[str] = []

    class Updater:
        def rollback(self, model: str) -> concurrent.futures.Future[dict[str, Any]]:
            asked.append(model)
            return pending

    monkeypatch.setattr(app_control, "ROLLBACK_WAIT_S", 0.05)
    config: Any = SimpleNamespace(cfg=cfg)
    control = app_control.DaemonControl(config, lambda _source: None, lambda: None, Updater)
    disp = CommandDispatcher(
        control, device=DEV, publish=lambda b: None, state_dir=None, max_payload_bytes=4096
    )
    req = json.dumps({"id": "rb-1", "expires": time.time() + 30, "args": {}}).encode()
    out = json.loads(disp.handle("rollback-model", req))
    assert out["ok"], out
    assert out["result"]["state"] == "queued" and out["result"]["model"] == "det"
    assert asked == ["det"]
