"""Reconnect backoff with full jitter: the delay sequence (seeded), and a real Mosquitto that is
stopped and restarted while the client draws its delays from the full-jitter bounds."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from agent.comms.backoff import FullJitterBackoff
from agent.comms.mqtt import MqttClient
from agent.config.broker import MqttConfig
from tests.helpers.broker import Broker, mosquitto_binary


def test_delays_follow_full_jitter_bounds_and_reset() -> None:
    backoff = FullJitterBackoff(0.5, 4.0, rng=random.Random(7))
    expected = random.Random(7)
    lost = backoff.next_delay(failed=False)  # a session was lost: n = 0
    assert lost == expected.uniform(0.0, 0.5)
    delays = [backoff.next_delay(failed=True) for _ in range(6)]  # n = 1..6
    bounds = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert delays == [expected.uniform(0.0, b) for b in bounds]
    assert [d.bound_s for d in backoff.history] == [0.5, *bounds]
    assert [d.failures for d in backoff.history] == [0, 1, 2, 3, 4, 5, 6]
    assert all(0.0 <= d.delay_s <= d.bound_s for d in backoff.history)
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.next_delay(failed=False) == expected.uniform(0.0, 0.5)
    assert backoff.next_delay(failed=True) == expected.uniform(0.0, 1.0)


def test_bounds_never_overflow_and_draws_spread() -> None:
    backoff = FullJitterBackoff(0.1, 30.0, rng=random.Random(1))
    assert backoff.bound_s(10_000) == 30.0
    draws = [FullJitterBackoff(1.0, 1.0, rng=random.Random(s)).next_delay(failed=False)
             for s in range(200)]  # fmt: skip
    assert min(draws) < 0.1 and max(draws) > 0.9  # the whole [0, bound], not ±50 %
    with pytest.raises(ValueError):
        FullJitterBackoff(0.0, 1.0)
    with pytest.raises(ValueError):
        FullJitterBackoff(2.0, 1.0)


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto binary not installed")
@pytest.mark.timeout(60)
def test_client_reconnects_with_full_jitter_after_broker_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    cfg = MqttConfig(enabled=True, url=broker.url, reconnect_min_s=0.05, reconnect_max_s=0.4)
    failures: list[float] = []
    fail_lock = threading.Lock()

    def on_fail() -> None:
        with fail_lock:
            failures.append(time.monotonic())

    client = MqttClient(
        cfg, client_id="jitter-dev", on_connect_failed=on_fail, rng=random.Random(3)
    )
    client.start()
    try:
        assert client.wait_connected(10)
        assert client.backoff.failures == 0
        broker.stop()
        deadline = time.monotonic() + 20
        while client.backoff.failures < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.backoff.failures >= 5, list(client.backoff.history)
        broker.start()
        assert client.wait_connected(15)
        draws = list(client.backoff.history)
        # the first draw after the loss is n = 0, then one more per failed attempt
        assert draws[0].failures == 0 and draws[0].bound_s == pytest.approx(0.05)
        assert [d.failures for d in draws] == list(range(len(draws)))
        for draw in draws:
            assert draw.bound_s == pytest.approx(min(0.4, 0.05 * 2**draw.failures))
            assert 0.0 <= draw.delay_s <= draw.bound_s
        # paho waited (at least) each drawn delay between two failed attempts
        with fail_lock:
            times = list(failures)
        for k in range(1, min(len(times), len(draws) - 1)):
            assert times[k] - times[k - 1] >= draws[k].delay_s - 0.02
        assert client.backoff.failures == 0  # reset on the successful CONNACK
        assert client.connects == 2
        broker.stop()  # a second loss starts again from reconnect_min_s
        deadline = time.monotonic() + 10
        while client.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        after = list(client.backoff.history)[len(draws) :]
        assert after and after[0].failures == 0 and after[0].bound_s == pytest.approx(0.05)
    finally:
        client.close()
        broker.stop()
