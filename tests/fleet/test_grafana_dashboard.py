"""The Grafana dashboard shipped in ``deploy/grafana/edge-agent-fleet.json`` against the real
controller:

* every metric name in every panel query and template-variable query is a series the controller
  exports at ``GET /metrics``, with samples, over a real broker with simulated devices, a device
  that reports power, temperature and memory, and a running rollout;
* with ``promtool`` installed, every query is valid PromQL (``promtool check rules``) and the
  example ``prometheus.yml`` is a valid configuration; with ``prometheus`` installed, a real
  Prometheus scraping that controller answers every query with data;
* the JSON binds no datasource UID and every numeric panel has a unit.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.comms.mqtt import MqttClient
from agent.config.broker import MqttConfig
from agent.fleet.client import FleetClient
from agent.fleet.sim import SimConfig, SimFleet
from agent.ota.states import UpdateState
from tests.assets import REPO
from tests.helpers.broker import Broker, free_port
from tests.helpers.fleet_controller import fleet_config, running, wait_for, write_token
from tests.helpers.fleet_messages import FLEET, Device, ota_record

pytestmark = pytest.mark.timeout(180)

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "edge-agent-fleet.json"
PROMETHEUS_YML = GRAFANA / "prometheus.yml"
DATASOURCE = "${DS_PROMETHEUS}"
NUMERIC_PANELS = {"timeseries", "stat", "gauge", "bargauge", "table", "barchart", "piechart"}
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
VARIABLE_VALUES = {"device": ".*", "group": ".*"}
"""What ``$device`` / ``$group`` become (both are regex matchers with "All" = ``.*``)."""

# --------------------------------------------------------------------------- the dashboard


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))  # collapsed rows hold their panels


def variable_expr(query: str | dict[str, Any]) -> str:
    """The PromQL inside a Grafana Prometheus variable query."""
    text = (query["query"] if isinstance(query, dict) else query).strip()
    if found := re.fullmatch(r"label_values\((.+),\s*[A-Za-z_]\w*\s*\)", text, re.S):
        return found.group(1)
    if found := re.fullmatch(r"query_result\((.+)\)", text, re.S):
        return found.group(1)
    raise AssertionError(f"variable query {text!r}: only label_values(selector, label) is used")


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found: list[tuple[str, str]] = []
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found.append((f"variable {var['name']!r}", variable_expr(var["query"])))
    return found


def substitute(expr: str, defined: set[str]) -> str:
    """``expr`` with Grafana's variables replaced by valid values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        assert name in defined and name in VARIABLE_VALUES, f"undefined variable ${name}: {expr}"
        return VARIABLE_VALUES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


# --------------------------------------------------------------------------- PromQL names

_AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}  # fmt: skip
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = (
    _AGGREGATORS | _GROUPING | {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"}
)
_STR = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"""
_TOKEN = re.compile(
    rf"""(?P<space>\s+|\#[^\n]*)
    |(?P<string>{_STR})
    |(?P<matchers>\{{(?:[^{{}}"'`]|{_STR})*\}})
    |(?P<range>\[[^\]]*\])
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])\d*)*)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<punct>==|!=|>=|<=|=~|!~|[-+*/%^<>(),@])""",
    re.X,
)
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?:"([^"]+)"|'([^']+)')""")


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        assert match is not None, f"cannot read {expr[pos : pos + 20]!r} in {expr!r}"
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither keywords nor
    called as functions; label lists of by/without/on/ignoring/group_* and everything inside
    ``{}`` (but ``__name__="x"``), strings, ranges and numbers are skipped."""
    toks = tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "matchers":
            names.update(a or b for a, b in _NAME_MATCHER.findall(text))
        elif kind == "ident" and text.lower() in _GROUPING and following == "(":
            i = next(j for j in range(i, len(toks)) if toks[j][1] == ")")
        elif kind == "ident" and following != "(" and text.lower() not in _KEYWORDS:
            names.add(text)
        i += 1
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model, version) (m_info{device=~"$device"})', {"m_info"}),
        ("rate(x_total[5m]) / on(device) group_left(model) max without (q) (y)", {"x_total", "y"}),
        (
            'label_replace(a, "dst", "$1", "src", "(.*)") and b offset 1h30m > bool 0.5e3',
            {"a", "b"},
        ),
        ('{__name__="odd:name", job="x}"} + count_values("v", c) - time() # up', {"odd:name", "c"}),
        ("SUM(rate(a[1m])) BY (inf) unless nan", {"a"}),
    ],
)
def test_metric_names_tokenizer(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --------------------------------------------------------------------------- static checks


def _datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def test_dashboard_is_portable_and_complete() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 36 and dash["id"] is None and dash["title"]
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert "edge_agent_fleet_device_up" in variables["device"]["definition"]
    assert "edge_agent_fleet_device_up" in variables["group"]["definition"]
    for ref in _datasource_refs(dash):
        if isinstance(ref, dict) and ref.get("type") == "grafana":  # the built-in annotations
            continue
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        assert uid == DATASOURCE, f"hard-coded datasource {ref!r}"
    panels = list(walk_panels(dash["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        if panel["type"] in NUMERIC_PANELS:
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit, f"panel {panel['title']!r} has no unit"
    for where, expr in dashboard_queries(dash):
        substitute(expr, set(variables))  # every variable it uses is defined
        assert metric_names(expr), f"{where} selects no series: {expr}"


# --------------------------------------------------------------------------- promtool


def _promtool() -> str:
    found = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(found).is_file():
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    dash = load_dashboard()
    defined = {v["name"] for v in dash["templating"]["list"]}
    rules = [
        {"record": f"dashboard:q{n}", "expr": substitute(expr, defined)}
        for n, (_, expr) in enumerate(dashboard_queries(dash))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    argv = [promtool, "check", "rules", str(path)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_example_prometheus_config_is_valid() -> None:
    promtool = _promtool()
    done = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS_YML)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert jobs["edge-agent-fleet"]["metrics_path"] == "/metrics"
    assert jobs["edge-agent-devices"]["metrics_path"] == "/metrics"


# --------------------------------------------------------------------------- the real controller


def _get(url: str, timeout_s: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


def settle(check: Callable[[], Collection[Any]], timeout_s: float, step: float) -> Collection[Any]:
    """``check()`` until it is empty or ``timeout_s`` has passed; its last answer."""
    deadline = time.monotonic() + timeout_s
    while (left := check()) and time.monotonic() < deadline:
        time.sleep(step)
    return left


def exported(exposition: str) -> set[str]:
    """The names that have samples. The parser names a counter's family ``x`` and its samples
    ``x_total``; PromQL selects the sample name, so that is the one compared."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
    return names


class FullDevice:
    """A device that reports every reading (power, temperatures, memory) and an OTA record."""

    def __init__(self, broker: Broker) -> None:
        self.cam = Device("full-01")
        self.client = MqttClient(MqttConfig(enabled=True, url=broker.url), client_id="full-01")

    def start(self) -> FullDevice:
        self.client.start()
        assert self.client.wait_connected(10)
        now = time.time()
        record = ota_record(UpdateState.ACTIVE, updated_at=int(now))
        for topic, payload in (self.cam.birth(ts=now), self.cam.model(record, ts=now)):
            assert self.client.publish_wait(topic, payload, retain=True, timeout_s=10)
        return self

    def report(self) -> None:
        """One metrics message (not retained: send it once the controller listens)."""
        assert self.client.publish_wait(*self.cam.metrics(ts=time.time()), timeout_s=10)

    def close(self) -> None:
        self.client.close()


def _start_rollout(api: FleetClient, keys: Path, bundle: Path) -> None:
    """A rollout that stays running (a long soak), so its counts are exported."""
    spec = {"bundle": str(bundle), "version": 2, "target": "devices:cam-0000,cam-0001",
            "canary": "1", "waves": ["100%"], "rate_per_min": 1200, "soak_s": 3600}  # fmt: skip
    rid = api.start_rollout(spec, keys / "ops.key")["id"]
    wait_for(lambda: api.rollout(rid)["state"] == "running", 20, "the rollout running")


def test_every_dashboard_series_is_exported_by_the_controller(
    broker: Broker, keys: Path, bundle: Path, tmp_path: Path
) -> None:
    dash = load_dashboard()
    wanted = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dash)))
    token_file, token = write_token(tmp_path / "secrets")
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=token_file)
    sims = SimConfig(mqtt_url=broker.url, trust_dir=keys, devices=3, fleet=FLEET, prefix="cam",
                     groups=("lobby", "dock"), interval_s=0.3, step_s=0.02, seed=5)  # fmt: skip
    device = FullDevice(broker).start()
    try:
        with SimFleet(sims) as fleet, running(cfg, tmp_path) as ctl:
            assert fleet.wait_connected(30)
            api = FleetClient(ctl.api_url, token)
            wait_for(lambda: len(api.devices()) == 4, 30, "4 devices in the registry")
            device.report()
            _start_rollout(api, keys, bundle)
            metrics_url = f"{ctl.api_url}/metrics"

            missing = settle(lambda: wanted - exported(_get(metrics_url)), 30, step=0.5)
            assert not missing, (
                f"the dashboard uses series the controller does not export: {missing}"
            )
            _check_in_prometheus(dash, metrics_url, tmp_path)
    finally:
        device.close()


# --------------------------------------------------------------------------- a real Prometheus


def _check_in_prometheus(dash: dict[str, Any], metrics_url: str, tmp_path: Path) -> None:
    """With ``prometheus`` installed: scrape the controller with the example job (every second)
    and wait until every dashboard query answers with data."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).is_file():
        return
    target = urllib.parse.urlsplit(metrics_url)
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "edge-agent-fleet")
    job.update(
        scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [target.netloc]}]
    )
    config["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--log.level=warn"]  # fmt: skip
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        defined = {v["name"] for v in dash["templating"]["list"]}
        queries = [(where, substitute(expr, defined)) for where, expr in dashboard_queries(dash)]

        empty = settle(lambda: [w for w, expr in queries if not _query(port, expr)], 60, step=1.0)
        assert not empty, f"queries without data in Prometheus: {empty}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _query(port: int, expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = json.loads(_get(url, timeout_s=5))
    except OSError:
        return []  # not up yet
    assert answer["status"] == "success", answer
    return answer["data"]["result"]
