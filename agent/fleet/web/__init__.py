"""The fleet dashboard's static files (``edge-agent fleet serve`` serves them at ``/``).

One page, no build step and no third-party code: ``static/index.html`` loads ``style.css`` and
the ES modules ``app.js`` (router, live stream), ``fleet.js`` (summary and device table),
``device.js`` (device page), ``rollout.js`` (rollout page with pause / resume / abort),
``chart.js`` (canvas line charts) and ``util.js``. They talk only to the controller's own API
(``/api/...``, live updates over ``/api/stream``) and work offline.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["static_dir"]


def static_dir() -> Path:
    """The folder of the dashboard's static files (shipped as package data)."""
    return Path(__file__).resolve().parent / "static"
