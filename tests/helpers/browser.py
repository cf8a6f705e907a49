"""A real headless Chromium for the dashboard's tests and benchmark: the distribution's browser
(``/usr/bin/chromium``) driven through Playwright's own protocol driver (the ``playwright`` wheel
ships it; its browser download is never used).

``Chromium`` starts one browser (``--no-sandbox`` when running as root, where Chromium's sandbox
refuses to start), hands out pages with bounded timeouts that record uncaught script errors and
accept ``confirm()`` dialogs, and stops it. ``screenshots_dir`` is where screenshots go: the
``--screenshots DIR`` option of pytest, else a folder under the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, ViewportSize

CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium-browser",
)
TIMEOUT_MS = 15_000
"""Default bound of every page action and wait (Playwright's own default is 30 s)."""
LAUNCH_TIMEOUT_MS = 60_000
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}


def chromium_binary() -> str | None:
    """The system's Chromium, or None where it is not installed."""
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def unavailable() -> str | None:
    """Why no browser test can run here (None when they can)."""
    if chromium_binary() is None:
        return "chromium not installed (scripts/test.sh adds the distribution's package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (scripts/setup.sh dev installs it)"
    return None


def screenshots_dir(config: pytest.Config, tmp_path: Path) -> Path:
    """``--screenshots DIR`` when given, else ``tmp_path/screenshots``; created."""
    chosen = config.getoption("--screenshots", default=None)
    directory = Path(chosen) if chosen else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def wait_js(page: Page, expression: str, what: str, *, arg: Any = None, timeout_ms: int = 0) -> Any:
    """The first truthy value of the JS ``expression`` (a function of ``arg``, or an expression)
    in ``page``, checked every animation frame; AssertionError naming ``what`` after
    ``timeout_ms`` (default: the page's bound)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(
            expression, arg=arg, polling="raf", timeout=timeout_ms or TIMEOUT_MS
        )
    except PlaywrightTimeout:
        raise AssertionError(f"timed out in the browser waiting for {what} ({page.url})") from None
    return handle.json_value()


class Chromium:
    """One headless Chromium; a context manager. ``page()`` opens a fresh page (own context:
    own cookies and sessionStorage); ``errors`` collects uncaught script errors of every page."""

    def __init__(self) -> None:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed")
        self.binary = binary
        self.errors: list[str] = []
        self._pw: Playwright | None = None
        self._browser: Browser | None = None

    def start(self) -> Chromium:
        from playwright.sync_api import sync_playwright

        args = ["--disable-dev-shm-usage", "--disable-gpu"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=self.binary, headless=True, args=args, timeout=LAUNCH_TIMEOUT_MS
            )
        except BaseException:
            self._pw.stop()
            self._pw = None
            raise
        return self

    def page(self, *, init_script: str | None = None) -> Page:
        assert self._browser is not None, "Chromium.start() first"
        context = self._browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        if init_script is not None:
            context.add_init_script(init_script)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    @staticmethod
    def close_page(page: Page) -> None:
        """Close the page and its context (its event stream ends with it)."""
        page.context.close()

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
