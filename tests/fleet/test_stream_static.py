"""The dashboard's files served by a real controller: ``/`` and ``/static/<name>`` from the
package's ``agent/fleet/web/static/`` (listed, by exact name), content types, no-cache, no
traversal, and a clear 404 where the dashboard is not installed."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from agent.fleet.controller.api import ApiServer
from agent.fleet.controller.static import CONTENT_TYPES, STATIC_DIR
from tests.helpers.broker import Broker
from tests.helpers.fleet_controller import fleet_config, running

FLEET = "webf"


def _get(url: str, path: str) -> tuple[int, bytes, http.client.HTTPMessage]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def test_files_types_and_traversal(broker: Broker, tmp_path: Path) -> None:
    names = sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in CONTENT_TYPES)
    assert "index.html" in names
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None)
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        status, body, headers = _get(url, "/")
        assert status == 200 and body == (STATIC_DIR / "index.html").read_bytes()
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Content-Type-Options"] == "nosniff"
        for name in names:
            status, body, headers = _get(url, f"/static/{name}")
            assert status == 200 and body == (STATIC_DIR / name).read_bytes(), name
            assert headers["Content-Type"] == CONTENT_TYPES[Path(name).suffix], name
        for path in (
            "/static/../api/health",
            "/static/..%2F..%2Fpyproject.toml",
            "/static/%2e%2e/controller/api.py",
            "/static/.hidden",
            "/static/nosuch.js",
            "/static/",
            "/static//etc/passwd",
            "/static/index.html/x",
        ):
            status, body, headers = _get(url, path)
            assert status == 404, path
            assert headers["Content-Type"] == "application/json", path
            assert json.loads(body)["error"]["code"] == "not_found", path


def test_without_the_dashboard_files_a_clear_404(broker: Broker, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "evil.sh").write_text("echo no")  # a file of no known type is never served
    (empty / "link.js").symlink_to("/etc/passwd")  # nor a link
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None)
    with running(cfg, tmp_path) as ctl:
        server = ApiServer(cfg.api, ctl, None, static_dir=empty)
        server.start()
        try:
            status, body, _ = _get(server.url, "/")
            error = json.loads(body)["error"]
            assert status == 404 and "dashboard is not installed" in error["message"]
            assert error["fix"]
            assert _get(server.url, "/static/evil.sh")[0] == 404
            assert _get(server.url, "/static/link.js")[0] == 404
            assert _get(server.url, "/api/health")[0] == 200
        finally:
            server.stop()
