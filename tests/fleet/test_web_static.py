"""The dashboard's static files: present, local-only (no CDN, no other host), no HTML built from
data, and the DOM contract's anchors in index.html (the browser tests drive the behaviour)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from agent.fleet.web import static_dir

FILES = (
    "index.html",
    "app.js",
    "fleet.js",
    "device.js",
    "rollout.js",
    "chart.js",
    "util.js",
    "style.css",
)
DEVICE_FIELDS = (
    "device", "status", "board", "profile", "model", "precision", "fps", "latency_p50_ms",
    "power_w", "temp_max_c", "memory_used_pct", "governor_state", "ota_state", "last_seen",
)  # fmt: skip
CHARTS = ("fps", "power_w", "temp_max_c", "memory_used_pct", "latency_p50_ms")
IDS = (
    "summary", "models", "rollouts", "filter", "devices", "live", "error", "device-title",
    "events", "ota-history", "rollout-state", "rollout-counts", "abort-reason", "waves",
    "pause", "resume", "abort", "token",
)  # fmt: skip


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _page() -> _Page:
    page = _Page()
    page.feed((static_dir() / "index.html").read_text(encoding="utf-8"))
    return page


def test_static_files_ship_in_the_package() -> None:
    folder = static_dir()
    assert folder.is_dir()
    assert folder == Path(__file__).resolve().parents[2] / "agent" / "fleet" / "web" / "static"
    for name in FILES:
        assert (folder / name).is_file(), name
        assert (folder / name).stat().st_size > 0, name


def test_no_url_to_another_host() -> None:
    remote = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
    for path in static_dir().iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text, re.IGNORECASE), path.name
        for match in remote.finditer(text):
            # `//` also starts a JavaScript comment: only a URL-looking host is refused
            assert path.suffix == ".js" and not match.group().startswith("//"), (path.name, match)


def test_index_references_only_local_assets() -> None:
    folder = static_dir()
    refs = [
        attrs[name]
        for tag, attrs in _page().tags
        for name in ("src", "href")
        if name in attrs and tag in ("script", "link", "img", "source", "iframe", "a")
    ]
    assert "/static/app.js" in refs and "/static/style.css" in refs
    for ref in refs:
        if ref.startswith("#") or ref == "data:,":
            continue
        assert ref.startswith("/static/"), ref
        assert (folder / ref.removeprefix("/static/")).is_file(), ref


def test_modules_import_only_their_neighbours() -> None:
    folder = static_dir()
    for path in folder.glob("*.js"):
        text = path.read_text(encoding="utf-8")
        for spec in re.findall(r"""from\s+["']([^"']+)["']""", text):
            assert spec.startswith("./") and (folder / spec[2:]).is_file(), (path.name, spec)


def test_scripts_never_build_html_from_text() -> None:
    for path in static_dir().glob("*.js"):
        text = path.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (path.name, sink)


def test_index_carries_the_dom_contract() -> None:
    tags = _page().tags
    ids = {attrs.get("id") for _, attrs in tags}
    assert set(IDS) <= ids, set(IDS) - ids
    sorts = [attrs["data-sort"] for tag, attrs in tags if tag == "th" and "data-sort" in attrs]
    assert sorts == list(DEVICE_FIELDS)
    charts = [attrs["data-chart"] for tag, attrs in tags if tag == "canvas"]
    assert sorted(charts) == sorted(CHARTS)
    counts = {attrs["data-count"] for _, attrs in tags if "data-count" in attrs}
    assert {"online", "offline", "degraded", "pending", "active", "failed"} <= counts
    token = next(attrs for tag, attrs in tags if attrs.get("id") == "token")
    assert token.get("type") == "password"
    fleet_js = (static_dir() / "fleet.js").read_text(encoding="utf-8")
    for field in DEVICE_FIELDS:
        assert f'"{field}"' in fleet_js, field
    assert "data-field" in fleet_js and "deviceId" in fleet_js
