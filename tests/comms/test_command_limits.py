"""The command dispatcher's bounds without a broker: token buckets, lanes bounded in items and
bytes, ``busy`` / ``rate_limited`` answers with ``retry_after_s``, exactly one response per
request, hostile payloads dropped and counted, names from the network sanitized."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from agent.comms.commands.dispatch import CommandDispatcher, CommandLimits
from agent.comms.commands.handlers import FAST
from agent.comms.commands.lanes import MAX_RETRY_S, MIN_RETRY_S, Lane, LaneLimits
from agent.comms.commands.requests import NoArgs
from agent.comms.payloads import event_payload, response_payload
from agent.comms.ratelimit import ClientRateLimits, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _req(rid: str, **extra: Any) -> bytes:
    return json.dumps({"id": rid, "expires": time.time() + 60, "args": {}, **extra}).encode()


class Outbox:
    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, payload: bytes) -> None:
        payload.decode("utf-8")  # publishable: strict UTF-8
        with self.cond:
            self.docs.append(json.loads(payload))
            self.cond.notify_all()

    def wait(self, n: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.docs) >= n, timeout_s), self.docs
            return list(self.docs)


def test_token_buckets() -> None:
    clock = Clock()
    limits = ClientRateLimits(per_s=2.0, burst=4.0, max_clients=3, clock=clock)
    assert [limits.admit("a") for _ in range(4)] == [None] * 4
    wait = limits.admit("a")
    assert wait is not None and wait == pytest.approx(0.5)
    assert limits.admit("b") is None  # another client has its own bucket
    clock.t += 0.5
    assert limits.admit("a") is None
    for name in ("c", "d", "e"):
        limits.admit(name)
    assert len(limits) == 3  # bounded: the least recently seen forgotten
    # the detections limiter keeps its old shape: bursts of one second's worth
    single = RateLimiter(5.0, clock=clock)
    assert sum(single.take() for _ in range(10)) == 5 and single.wait_s() > 0


def test_lane_bounded_in_items_and_bytes() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def run(item: int) -> None:
        gate.wait(10)
        if item == 0:
            raise RuntimeError("a bad handler")
        ran.append(item)

    lane = Lane[int]("t", LaneLimits(max_items=3, max_bytes=100), run)
    assert lane.put(0, 1000)  # an empty lane takes any one item
    assert not lane.put(1, 1)  # ... and then is full in bytes
    lane.start()
    deadline = time.monotonic() + 5
    while lane.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [lane.put(i, 10) for i in range(1, 6)] == [True, True, True, False, False]
    assert MIN_RETRY_S <= lane.retry_after_s() <= MAX_RETRY_S
    gate.set()
    lane.close(5)
    assert ran == [1, 2, 3] and lane.errors == 1 and lane.refused == 3


def _dispatcher(out: Outbox, **limits: Any) -> CommandDispatcher:
    disp = CommandDispatcher(
        None,
        device="d1",
        publish=out,
        state_dir=None,
        max_payload_bytes=4096,
        limits=CommandLimits(**limits),
    )
    disp.start()
    return disp


def test_full_fast_lane_answers_busy_once_each() -> None:
    out = Outbox()
    disp = _dispatcher(out, fast=LaneLimits(4, 1 << 20))
    gate, running = threading.Event(), threading.Event()

    def slow_read(_args: NoArgs) -> bool:
        running.set()
        return gate.wait(10)

    disp.register("slow-read", NoArgs, slow_read, lane=FAST, remember=False)
    try:
        ids = [f"r{i}" for i in range(10)]
        assert disp.submit("slow-read", _req(ids[0], client="c0"))
        assert running.wait(5)
        accepted = [disp.submit("slow-read", _req(rid, client=f"c{rid}")) for rid in ids[1:]]
        # one running, four queued; the other five answered busy at once
        assert sum(accepted) == 4
        busy = out.wait(5)
        assert all(d["error"]["code"] == "busy" and d["retry_after_s"] > 0 for d in busy)
        gate.set()
        docs = out.wait(10)
        assert Counter(d["id"] for d in docs) == Counter(ids)  # exactly one response each
        assert disp.busy == 5 and disp.executed == 5
    finally:
        gate.set()
        disp.close(5)


def test_rate_limited_per_client() -> None:
    out = Outbox()
    disp = _dispatcher(out, per_client_per_s=1.0, per_client_burst=3.0)
    try:
        for i in range(10):
            disp.submit("ping", _req(f"a{i}", client="noisy"))
        disp.submit("ping", _req("b0", client="quiet"))
        disp.submit("ping", _req("n0"))  # no client: the shared anonymous budget
        docs = {d["id"]: d for d in out.wait(12)}
        limited = [d for d in docs.values() if not d["ok"]]
        assert len(limited) == 7 and all(d["error"]["code"] == "rate_limited" for d in limited)
        assert all(0 < d["retry_after_s"] <= 1.0 for d in limited)
        assert docs["b0"]["ok"] and docs["n0"]["ok"]
        assert disp.rate_limited == 7
    finally:
        disp.close(5)


def test_hostile_payloads_dropped_counted_or_invalid() -> None:
    out = Outbox()
    disp = _dispatcher(out)
    try:
        assert not disp.submit("ping", b"[" * 100_000)  # huge: refused on size first
        assert not disp.submit("ping", b'{"id":"x","args":' + b"[" * 500 + b"]" * 500 + b"}")
        assert not disp.submit("ping", b'{"id":"\\udc00x","expires":1e12}')
        assert not disp.submit("ping", b'{"id":"tab\\there","expires":1e12}')  # not printable
        assert disp.submit("ping", b'{"id":"ok-id","expires":"tomorrow"}')
        assert disp.submit("set-profile", _req("args", args={"name": "Bad Name!"}))
        docs = {d["id"]: d for d in out.wait(2)}
        assert docs["ok-id"]["error"]["code"] == "bad_request"
        assert docs["args"]["error"]["code"] == "bad_args"
        assert disp.dropped == Counter(too_large=1, too_deep=1, bad_unicode=1, no_id=1)
        # the synchronous path answers too (id null), never raises
        doc = json.loads(disp.handle("ping", b"[" * 100))
        assert doc["error"]["code"] == "bad_json" and doc["id"] is None
    finally:
        disp.close(5)


def test_names_from_the_network_never_break_publishing() -> None:
    doc = json.loads(
        response_payload(
            request_id="r1", command="ping\ud800\x00" + "y" * 300, device="d", ok=False,
            error_code="unknown_command", error="unknown command 'ping\ud800'",
        )
    )  # fmt: skip
    assert doc["command"].isprintable() and len(doc["command"]) <= 64
    assert "\ud800" not in doc["error"]["message"]
    # a lone surrogate in free-form event data (an OTA rejection naming a model) still publishes
    raw = event_payload("ota.state", {"model": "det\ud800"}, device="d", boot=1, seq=1, ts=1.0)
    assert json.loads(raw.decode("utf-8"))["data"]["model"].startswith("det")


def test_read_only_commands_are_not_remembered() -> None:
    out = Outbox()
    disp = _dispatcher(out)
    try:
        first = json.loads(disp.handle("ping", _req("same")))
        time.sleep(0.01)
        again = json.loads(disp.handle("ping", _req("same")))
        assert first["ok"] and again["ok"] and again["result"]["ts"] >= first["result"]["ts"]
        assert disp.replay.get("same") is None
    finally:
        disp.close(5)
