"""The fleet dashboard in a real headless Chromium, against a real controller (SQLite store, a
real Mosquitto) and 200 simulated devices reporting every second: the table lists every device,
filters and sorts; a device going offline turns its row offline without a reload; a device page
draws its charts from the history; a running rollout shows on the fleet page and its page aborts
it with the operator's token. Screenshots of the three pages go to ``--screenshots DIR`` (else
the module's tmp dir)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.fleet.keygen import generate_keypair
from agent.fleet.sim import SimConfig, SimFleet
from tests.helpers.broker import Broker, mosquitto_binary
from tests.helpers.browser import Chromium, screenshots_dir, unavailable, wait_js
from tests.helpers.fleet_controller import fleet_config, request, running, wait_for, write_token
from tests.helpers.ota_support import copy_bundle

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.slow, pytest.mark.scale]

FLEET = "dash"
DEVICES = 200
FIELDS = (
    "device", "status", "board", "profile", "model", "precision", "fps", "latency_p50_ms",
    "power_w", "temp_max_c", "memory_used_pct", "governor_state", "ota_state", "last_seen",
)  # fmt: skip
CHARTS = ("fps", "power_w", "temp_max_c", "memory_used_pct", "latency_p50_ms")
WAIT_MS = 20_000
"""Bound of the waits for what the event stream brings (a change reaches the page within 2 s)."""

ROWS_JS = "document.querySelectorAll('tr[data-device-id]')"
SHOWN_JS = (
    f"[...{ROWS_JS}].filter(r => !r.hidden && getComputedStyle(r).display !== 'none')"
    ".map(r => r.dataset.deviceId)"
)
ROW_STATUS_JS = """id => {
  const row = document.querySelector(`tr[data-device-id="${CSS.escape(id)}"]`);
  return row ? row.dataset.status : null;
}"""
TEXT_JS = """([selector, want]) => {
  const el = document.querySelector(selector);
  return el !== null && el.textContent.trim() === want;
}"""
COUNTS_JS = """() => {
  const read = s => {
    const el = document.querySelector(`#summary [data-count="${s}"]`);
    return el ? parseInt(el.textContent.replace(/[^0-9]/g, ''), 10) : NaN;
  };
  const rows = [...document.querySelectorAll('tr[data-device-id]')];
  const count = s => rows.filter(r => r.dataset.status === s).length;
  return {
    shown: {online: read('online'), offline: read('offline'), degraded: read('degraded')},
    rows: {online: count('online'), offline: count('offline'), degraded: count('degraded')},
  };
}"""


@dataclass
class Stack:
    url: str
    token: str
    sim: SimFleet
    browser: Chromium
    shots: Path
    key: Path
    bundle: Path


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    reason = unavailable() or (None if mosquitto_binary() else "mosquitto not installed")
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("dashboard")
    keys = base / "keys"
    generate_keypair(keys, "ops")
    token_file, token = write_token(base / "secrets")
    with Broker(base / "broker") as broker:
        sim = SimConfig(
            mqtt_url=broker.url, trust_dir=keys, devices=DEVICES, fleet=FLEET, prefix="cam",
            groups=("north", "south"), interval_s=1.0, step_s=0.05, seed=11,
        )  # fmt: skip
        cfg = fleet_config(
            base, broker.url, fleet=FLEET, token_file=token_file,
            history={"resolution_s": 1.0, "retention_h": 1.0},
        )  # fmt: skip
        with SimFleet(sim) as devices, running(cfg, base) as ctl:
            assert devices.wait_connected(60), "the simulated devices did not connect"
            wait_for(lambda: _registry_full(ctl.api_url), 60, f"{DEVICES} devices with metrics")
            with Chromium() as browser:
                yield Stack(
                    url=ctl.api_url, token=token, sim=devices, browser=browser,
                    shots=screenshots_dir(request.config, base), key=keys / "ops.key",
                    bundle=copy_bundle(base / "bundle"),
                )  # fmt: skip


@pytest.fixture
def dash(stack: Stack) -> Iterator[Stack]:
    """The shared stack; the test fails on any uncaught script error of its pages."""
    stack.browser.errors.clear()
    yield stack
    assert stack.browser.errors == [], "uncaught script errors in the dashboard"


def _registry_full(url: str) -> bool:
    devices = request(url, "GET", "/api/devices")[1].get("devices", [])
    return len(devices) == DEVICES and all(d["online"] and d["metrics"] for d in devices)


def _open(stack: Stack, route: str) -> Page:
    page = stack.browser.page()
    page.goto(f"{stack.url}/{route}")
    return page


def _open_fleet(stack: Stack) -> Page:
    page = _open(stack, "#/")
    wait_js(page, f"{ROWS_JS}.length === {DEVICES}", f"{DEVICES} rows", timeout_ms=WAIT_MS)
    wait_js(page, TEXT_JS, "#live to say live", arg=["#live", "live"], timeout_ms=WAIT_MS)
    return page


def _shot(stack: Stack, page: Page, name: str) -> Path:
    path = stack.shots / name
    page.screenshot(path=str(path))  # the viewport: 1440 x 900
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def _wait_state(page: Page, state: str) -> None:
    wait_js(
        page, TEXT_JS, f"#rollout-state {state}", arg=["#rollout-state", state], timeout_ms=WAIT_MS
    )


def test_the_fleet_page_lists_every_device_with_its_counts(dash: Stack) -> None:
    page = _open_fleet(dash)
    try:
        ids = page.eval_on_selector_all(
            "tr[data-device-id]", "rows => rows.map(r => r.dataset.deviceId)"
        )
        assert sorted(ids) == sorted(dash.sim.ids)
        row = page.locator('tr[data-device-id="cam-0000"]')
        for field in FIELDS:
            assert row.locator(f'td[data-field="{field}"]').count() == 1, field
        assert row.locator('td[data-field="device"]').inner_text().strip() == "cam-0000"
        assert "shapes-cls" in row.locator('td[data-field="model"]').inner_text()
        assert any(c.isdigit() for c in row.locator('td[data-field="fps"]').inner_text())
        # board and profile as the devices report them in their metrics
        assert "Orin Nano" in row.locator('td[data-field="board"]').inner_text()
        assert row.locator('td[data-field="profile"]').inner_text().strip() == "orin-nano-8gb"
        # the summary's counts are those of the rows, and of the API
        counts = wait_js(
            page,
            f"(c => JSON.stringify(c.shown) === JSON.stringify(c.rows) && c)(({COUNTS_JS})())",
            "the summary's counts to match the rows",
            timeout_ms=WAIT_MS,
        )
        assert sum(counts["shown"].values()) == DEVICES
        assert counts["shown"]["offline"] == 0
        summary = request(dash.url, "GET", "/api/summary")[1]
        assert summary["devices"]["total"] == DEVICES and summary["devices"]["offline"] == 0
        assert "shapes-cls" in page.locator("#models").inner_text()
    finally:
        Chromium.close_page(page)


def test_the_table_filters_and_sorts(dash: Stack) -> None:
    page = _open_fleet(dash)
    try:
        page.locator("#filter").fill("cam-001")
        wait_js(page, f"{SHOWN_JS}.length === 10", "10 rows shown", timeout_ms=WAIT_MS)
        assert sorted(page.evaluate(SHOWN_JS)) == [f"cam-{i:04d}" for i in range(10, 20)]
        page.locator("#filter").fill("")
        wait_js(page, f"{SHOWN_JS}.length === {DEVICES}", "every row again", timeout_ms=WAIT_MS)
        header = page.locator('table#devices thead th[data-sort="device"]')
        header.click()
        first = page.evaluate(SHOWN_JS)
        assert first in (sorted(first), sorted(first, reverse=True))
        header.click()
        wait_js(
            page,
            f"want => JSON.stringify({SHOWN_JS}) === JSON.stringify(want)",
            "the reverse order after a second click",
            arg=first[::-1],
            timeout_ms=WAIT_MS,
        )
    finally:
        Chromium.close_page(page)


def test_a_device_going_offline_turns_its_row_offline_without_a_reload(dash: Stack) -> None:
    target = "cam-0042"
    page = _open_fleet(dash)
    try:
        assert page.evaluate(ROW_STATUS_JS, target) in ("online", "degraded")
        page.evaluate("window.__sameDocument = 42")
        dash.sim.take_offline([target])
        wait_js(
            page, f"id => ({ROW_STATUS_JS})(id) === 'offline'", f"{target}'s row offline",
            arg=target, timeout_ms=WAIT_MS,
        )  # fmt: skip
        cell = page.locator(f'tr[data-device-id="{target}"] td[data-field="status"]')
        assert "offline" in cell.inner_text().lower()
        wait_js(
            page, TEXT_JS, "one device counted offline",
            arg=['#summary [data-count="offline"]', "1"], timeout_ms=WAIT_MS,
        )  # fmt: skip
        assert page.evaluate("window.__sameDocument") == 42, "the page was reloaded"
        dash.sim.bring_online([target])
        wait_js(
            page, f"id => ({ROW_STATUS_JS})(id) !== 'offline'", f"{target}'s row back online",
            arg=target, timeout_ms=WAIT_MS,
        )  # fmt: skip
        assert page.evaluate("window.__sameDocument") == 42
    finally:
        Chromium.close_page(page)


def _history_points(url: str, device: str) -> int:
    status, doc, _ = request(url, "GET", f"/api/devices/{device}/history?seconds=3600")
    assert status == 200, doc
    return len(doc["points"])


def test_a_device_page_draws_its_charts_from_the_history(dash: Stack) -> None:
    device = "cam-0003"
    wait_for(lambda: _history_points(dash.url, device) >= 3, 30, "three history points")
    page = _open(dash, f"#/device/{device}")
    try:
        wait_js(
            page, "id => document.querySelector('#device-title')?.textContent.includes(id)",
            "the device's title", arg=device, timeout_ms=WAIT_MS,
        )  # fmt: skip
        # the simulated devices report all five (an Orin Nano-like board's power, temperature
        # and memory beside fps and latency)
        for chart in CHARTS:
            wait_js(
                page,
                'name => parseInt(document.querySelector(`canvas[data-chart="${name}"]`)'
                "?.dataset.points ?? '0', 10) > 0",
                f"the {chart} chart drawn",
                arg=chart,
                timeout_ms=WAIT_MS,
            )
        drawn = {
            chart: page.locator(f'canvas[data-chart="{chart}"]').get_attribute("data-points")
            for chart in CHARTS
        }
        assert all(0 < int(drawn[c] or 0) <= 360 for c in CHARTS), drawn
        assert page.locator("table#events").count() == 1
        assert page.locator("table#ota-history").count() == 1
        _shot(dash, page, "device.png")
    finally:
        Chromium.close_page(page)


def _start_rollout(stack: Stack) -> dict[str, Any]:
    spec = {
        "bundle": str(stack.bundle), "version": 2, "canary": "2", "waves": ["100%"],
        "rate_per_min": 2, "soak_s": 600,
    }  # fmt: skip
    body = json.dumps({"spec": spec, "key_path": str(stack.key)}).encode()
    status, doc, _ = request(stack.url, "POST", "/api/rollouts", body=body, token=stack.token)
    assert status == 201, doc
    return doc


def _rollout(stack: Stack, rollout_id: str) -> dict[str, Any]:
    status, doc, _ = request(stack.url, "GET", f"/api/rollouts/{rollout_id}")
    assert status == 200, doc
    return doc


def _fleet_shows_the_rollout(stack: Stack, rollout_id: str) -> None:
    page = _open_fleet(stack)
    try:
        wait_js(
            page, "id => document.querySelector(`#rollouts a[href*=\"${id}\"]`) !== null",
            "a link to the rollout in #rollouts", arg=rollout_id, timeout_ms=WAIT_MS,
        )  # fmt: skip
        _shot(stack, page, "fleet.png")
    finally:
        Chromium.close_page(page)


def _a_wrong_token_is_refused(stack: Stack, rollout_id: str) -> None:
    page = _open(stack, f"#/rollout/{rollout_id}")
    try:
        _wait_state(page, "running")
        page.locator("input#token").fill("not-the-token-" + "0" * 32)
        page.locator("button#pause").click()
        wait_js(
            page, "(e => e && !e.hidden && e.innerText.trim().length > 3 && e.innerText)"
            "(document.querySelector('#error'))",
            "the API's refusal in #error", timeout_ms=WAIT_MS,
        )  # fmt: skip
        assert _rollout(stack, rollout_id)["state"] == "running"
    finally:
        Chromium.close_page(page)


def test_a_running_rollout_shows_and_its_page_aborts_it(dash: Stack) -> None:
    rid = _start_rollout(dash)["id"]
    wait_for(lambda: _rollout(dash, rid)["state"] == "running", 20, "the rollout to run")
    _fleet_shows_the_rollout(dash, rid)
    _a_wrong_token_is_refused(dash, rid)
    page = _open(dash, f"#/rollout/{rid}")
    try:
        _wait_state(page, "running")
        assert page.locator("table#waves tbody tr").count() == 2  # the canary, then 100 %
        _shot(dash, page, "rollout.png")
        token = page.locator("input#token")
        assert token.get_attribute("type") == "password"
        token.fill(dash.token)
        page.locator("button#abort").click()
        _wait_state(page, "aborted")
        after = _rollout(dash, rid)
        assert after["state"] == "aborted" and after["abort_reason"] == "aborted by operator"
        assert "aborted by operator" in page.locator("#abort-reason").inner_text()
        assert page.evaluate("sessionStorage.length") >= 1  # the token is kept for the session
        _shot(dash, page, "rollout-aborted.png")
    finally:
        Chromium.close_page(page)
