"""Calibration frames: read a folder of images / ``.npy`` files into preprocessed tensors.

Files are taken in sorted name order; the *last* ``heldout`` files are held out for the validation
gate and never used for calibration. The set's hash covers every file's name and content plus the
preprocessing, so it keys calibration caches safely.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.config.model import InputSpec
from agent.core.errors import CalibrationError
from agent.core.fsutil import sha256_file
from agent.core.progress import ProgressFn, no_progress
from agent.engine.bundle import ModelBundle
from agent.vision.letterbox import (
    IMAGE_SUFFIXES,
    InvalidFrame,
    load_image_or_npy,
    preprocess,
    validate_frame,
)

__all__ = ["ADD_FRAMES_FIX", "CALIB_SUFFIXES", "CalibrationSet", "load_calibration_set"]

CALIB_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
#: Below this many calibration frames activation ranges are too noisy to trust.
MIN_CALIB_FRAMES = 4

ADD_FRAMES_FIX = (
    "copy at least the profile's calibration frames + held-out frames (96 for most profiles) "
    "JPEGs from this device's cameras here, scenes like the ones the model will see "
    "(calib/README.md says how)"
)


@dataclass
class CalibrationSet:
    """Preprocessed calibration tensors, the held-out tensors/frames for the gate, and a hash.

    ``heldout_frames[i]`` is the original BGR frame of ``heldout[i]``; it is empty when a held-out
    file is an already preprocessed ``.npy`` tensor (then the gate must use ``heldout``).
    """

    calib: list[np.ndarray]  # each [1,C,H,W] (or [1,H,W,C]) float32, preprocessed
    heldout: list[np.ndarray]
    heldout_frames: list[np.ndarray]  # original BGR frames for the gate
    files: tuple[str, ...]
    sha256: str
    calib_files: tuple[str, ...] = field(default=())
    heldout_files: tuple[str, ...] = field(default=())


def _expected_shape(spec: InputSpec, size_hw: tuple[int, int]) -> tuple[int, ...]:
    h, w = size_hw
    return (1, 3, h, w) if spec.layout == "NCHW" else (1, h, w, 3)


def _tensor(
    path: Path, spec: InputSpec, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(preprocessed tensor, original frame or None) for one file."""
    data = load_image_or_npy(path)
    expected = _expected_shape(spec, size_hw)
    if path.suffix.lower() == ".npy" and data.dtype != np.uint8:
        if data.dtype not in (np.float32, np.float16, np.float64):
            raise CalibrationError(
                f"array has dtype {data.dtype}; expected a uint8 H x W x 3 BGR frame or a "
                f"preprocessed float32 tensor of shape {expected}",
                fix="save raw frames as uint8 or preprocessed tensors as float32",
                path=path,
            )
        tensor = data.astype(np.float32).reshape(data.shape)
        if tensor.shape == expected[1:]:
            tensor = tensor[None]
        if tensor.shape != expected:
            raise CalibrationError(
                f"preprocessed tensor has shape {tuple(data.shape)}; this model needs "
                f"{expected} (or {expected[1:]})",
                fix="re-export the tensors at the model's input size, or store raw uint8 frames "
                "instead and let the agent preprocess them",
                path=path,
            )
        return np.ascontiguousarray(tensor), None
    frame = validate_frame(data, what=str(path))
    tensor, _ = preprocess(frame, spec, size_hw)
    return tensor, frame


def calibration_files(directory: Path) -> list[Path]:
    """Calibration files in ``directory`` (not recursive), sorted by name."""
    return sorted(
        (p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in CALIB_SUFFIXES),
        key=lambda p: p.name,
    )


def _list_files(directory: Path) -> list[Path]:
    """The folder's calibration files; :class:`CalibrationError` when there are none."""
    if not directory.is_dir():
        raise CalibrationError(
            "calibration folder does not exist", fix=ADD_FRAMES_FIX, path=directory
        )
    try:
        files = calibration_files(directory)
    except OSError as exc:
        raise CalibrationError(
            f"cannot list the calibration folder: {exc}",
            fix="check its permissions",
            path=directory,
        ) from exc
    if not files:
        raise CalibrationError(
            f"no calibration frames (looked for {', '.join(CALIB_SUFFIXES)})",
            fix=ADD_FRAMES_FIX,
            path=directory,
        )
    return files


def _split_files(
    directory: Path, files: list[Path], count: int, heldout: int
) -> tuple[list[Path], list[Path]]:
    """(calibration files, held-out files): the last ``heldout`` files are held out."""
    available = len(files) - heldout
    wanted_min = min(int(count), MIN_CALIB_FRAMES)
    if available < max(1, wanted_min):
        raise CalibrationError(
            f"only {len(files)} frames: {heldout} are held out for validation, which leaves "
            f"{max(available, 0)} for calibration (at least {max(1, wanted_min)} needed, "
            f"{count} wanted)",
            fix=f"add at least {max(1, wanted_min) + heldout - len(files)} more frames; "
            f"{ADD_FRAMES_FIX}",
            path=directory,
        )
    calib_paths = files[: min(int(count), available)]
    held_paths = files[len(files) - heldout :] if heldout else []
    return calib_paths, held_paths


def _read_file(
    directory: Path, path: Path, spec: InputSpec, size_hw: tuple[int, int], digest: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Hash ``path`` into ``digest`` and return its (tensor, original frame or None)."""
    try:
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
        return _tensor(path, spec, size_hw)
    except InvalidFrame as exc:
        raise CalibrationError(
            f"unreadable calibration file {path.name}: {exc.message}",
            fix="delete or replace it (every file in the folder must be a readable "
            "JPEG/PNG/BMP image or .npy array)",
            path=directory,
        ) from exc
    except OSError as exc:
        raise CalibrationError(
            f"cannot read calibration file {path.name}: {exc}",
            fix="check the file's permissions or replace it",
            path=directory,
        ) from exc


def load_calibration_set(
    directory: Path,
    bundle: ModelBundle,
    size_hw: tuple[int, int],
    count: int,
    heldout: int,
    *,
    progress: ProgressFn = no_progress,
) -> CalibrationSet:
    """Load up to ``count`` calibration frames plus the last ``heldout`` files of ``directory``.

    Raises :class:`CalibrationError` naming the directory (or file) and the fix when
    the folder is missing, empty, has too few files or holds an unreadable one.
    """
    directory = Path(directory)
    files = _list_files(directory)
    calib_paths, held_paths = _split_files(directory, files, count, max(0, int(heldout)))
    spec = bundle.config.input
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    digest = hashlib.sha256()
    calib: list[np.ndarray] = []
    held: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    used = [*calib_paths, *held_paths]
    for index, path in enumerate(used):
        tensor, frame = _read_file(directory, path, spec, size_hw, digest)
        if index < len(calib_paths):
            calib.append(tensor)
        else:
            held.append(tensor)
            if frame is not None:
                frames.append(frame)
        progress("load-calibration", (index + 1) / len(used), path.name)
    if len(frames) != len(held):
        frames = []
    recipe = {
        "input": spec.model_dump(mode="json"),
        "size_hw": list(size_hw),
        "calib": [p.name for p in calib_paths],
        "heldout": [p.name for p in held_paths],
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return CalibrationSet(
        calib=calib,
        heldout=held,
        heldout_frames=frames,
        files=tuple(p.name for p in used),
        sha256=digest.hexdigest(),
        calib_files=tuple(p.name for p in calib_paths),
        heldout_files=tuple(p.name for p in held_paths),
    )
