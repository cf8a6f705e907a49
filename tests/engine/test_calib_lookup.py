"""Where a build finds its calibration frames when none are named (``--calib``/``calib_dir``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.core.errors import CalibrationError
from agent.engine.build.steps import resolve_calib_dir
from agent.engine.bundle import load_bundle
from tests.assets import DET_BUNDLE, DET_CALIB


def test_named_dir_wins(tmp_path: Path) -> None:
    assert resolve_calib_dir(load_bundle(DET_BUNDLE), tmp_path / "x", tmp_path) == tmp_path / "x"


def test_working_directory_then_the_packaged_frames_of_a_bundled_model(tmp_path: Path) -> None:
    bundle = load_bundle(DET_BUNDLE)
    # from anywhere (an installed wheel): the frames that ship with the bundled model
    assert resolve_calib_dir(bundle, None, tmp_path) == DET_CALIB
    # the user's own calib/<model name>/ under the working directory comes first
    (tmp_path / "calib" / "shapes-det").mkdir(parents=True)
    assert resolve_calib_dir(bundle, None, tmp_path) == tmp_path / "calib" / "shapes-det"


def test_a_copied_bundle_gets_no_packaged_frames(tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(DET_BUNDLE, copy)
    with pytest.raises(CalibrationError, match="no calibration frames found") as err:
        resolve_calib_dir(load_bundle(copy), None, tmp_path / "elsewhere")
    assert err.value.fix and "--calib" in err.value.fix
