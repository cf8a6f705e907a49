"""One registry of the repository's test assets: every path a test needs, defined once.

Import the names (``from tests.assets import REPO, DET_BUNDLE, DET_CALIB``) instead of rebuilding
paths from ``__file__`` in each test module.
"""

from __future__ import annotations

from pathlib import Path

#: the repository root (the checkout holding ``agent/`` and ``tests/``)
REPO = Path(__file__).resolve().parents[1]

# ---- the package's own data (agent/data)
DATA = REPO / "agent" / "data"
MODELS = DATA / "models"
DET_BUNDLE = MODELS / "shapes-det"
CLS_BUNDLE = MODELS / "shapes-cls"
HELDOUT = DATA / "heldout"
DET_HELDOUT = HELDOUT / "shapes-det"
CLS_HELDOUT = HELDOUT / "shapes-cls"
SAMPLE_VIDEO = DATA / "samples" / "shapes.mp4"
DEFAULT_CONFIG = DATA / "agent.default.yaml"

# ---- calibration frames (calib/<model>)
CALIB = REPO / "calib"
DET_CALIB = CALIB / "shapes-det"
CLS_CALIB = CALIB / "shapes-cls"

# ---- device profiles, unit files, scripts
PROFILES_DIR = REPO / "device_profiles"
SYSTEMD_DIR = REPO / "systemd"
SCRIPTS = REPO / "scripts"

# ---- test fixtures (tests/fixtures)
FIXTURES = REPO / "tests" / "fixtures"
BOARDS = FIXTURES / "boards"
SYSFS = FIXTURES / "sysfs"
