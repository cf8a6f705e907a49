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

# ---- calibration frames of the bundled models (agent/data/calib/<model>)
CALIB = DATA / "calib"
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

# ---- real exports from other frameworks (tests/fixtures/models; scripts/make_real_assets.py)
REAL_MODELS = FIXTURES / "models"
YOLOV8N_BUNDLE = REAL_MODELS / "yolov8n-shapes"  # Ultralytics, dynamic batch/H/W (AGPL-3.0 asset)
YOLO11N_BUNDLE = REAL_MODELS / "yolo11n-shapes"  # Ultralytics, static 1x3x320x320 (AGPL-3.0 asset)
MOBILENETV3_BUNDLE = REAL_MODELS / "mobilenetv3-shapes"  # H/W share dim "?", BN unfused
RESNET_BUNDLE = REAL_MODELS / "resnet-shapes"  # H/W share dim "?", BN unfused
DBNET_BUNDLE = REAL_MODELS / "dbnet-shapes"  # [N,1,640,640] dense output, task raw
ANON_DIMS_BUNDLE = REAL_MODELS / "anon-dims"  # batch dim_value -1, anonymous H/W
