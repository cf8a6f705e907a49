"""Calibration frames: read a folder of images / ``.npy`` files into preprocessed tensors, and
the held-out frames of the validation gate.

Files are taken in sorted name order. When the bundle carries a labelled ``heldout/`` folder
(:mod:`agent.engine.validate.labels`) the gate uses its images and every calibration-folder
frame may calibrate; otherwise the *last* ``heldout`` files of the calibration folder are held
out (unlabelled) and never used for calibration. Held-out frames are checked up front (each is
read once, then dropped) and read again lazily, one at a time, when the gate consumes them
(:class:`HeldoutFrames`), so their number does not bound memory. The set's hash covers every
file's name and content (labels included) plus the preprocessing, so it keys caches safely.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from agent.config.model import InputSpec
from agent.core.errors import CalibrationError, ModelError
from agent.core.fsutil import sha256_file
from agent.core.progress import ProgressFn, no_progress
from agent.engine.bundle import ModelBundle
from agent.engine.validate.frames import GateFrame
from agent.engine.validate.labels import (
    LABELS_FILE,
    FrameLabel,
    HeldoutLabels,
    check_boxes_inside,
    heldout_images,
    load_heldout_labels,
)
from agent.vision.letterbox import (
    IMAGE_SUFFIXES,
    InvalidFrame,
    LetterboxInfo,
    load_image_or_npy,
    preprocess,
    validate_frame,
)

__all__ = [
    "ADD_FRAMES_FIX",
    "CALIB_SUFFIXES",
    "CalibrationSet",
    "HeldoutFrames",
    "load_calibration_set",
]

log = logging.getLogger(__name__)

CALIB_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
#: Below this many calibration frames activation ranges are too noisy to trust.
MIN_CALIB_FRAMES = 4
#: Held-out frames taken from a calibration folder too small for calibration + held-out.
FALLBACK_HELDOUT = 32

ADD_FRAMES_FIX = (
    "copy at least the profile's calibration frames + held-out frames (96 for most profiles) "
    "JPEGs from this device's cameras here, scenes like the ones the model will see "
    "(agent/data/calib/README.md says how)"
)


@dataclass(frozen=True)
class _Read:
    tensor: np.ndarray
    frame: np.ndarray | None
    letterbox: LetterboxInfo | None


class _LazyFrames(Sequence[np.ndarray]):
    """A sequence whose items are read on demand by :meth:`_item` (a slice reads each in turn)."""

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        return self._item(index)

    @abstractmethod
    def _item(self, index: int) -> np.ndarray: ...


class HeldoutFrames(_LazyFrames):
    """The gate's held-out frames, read and preprocessed on demand (``self[i]`` is the tensor).

    Holds only paths (and labels, for a bundle's ``heldout/``); :meth:`gate_frames` yields one
    :class:`~agent.engine.validate.frames.GateFrame` at a time."""

    def __init__(
        self,
        paths: Sequence[Path],
        spec: InputSpec,
        size_hw: tuple[int, int],
        labels: Sequence[FrameLabel] | None = None,
        source: str = "",
    ) -> None:
        self.paths = tuple(paths)
        self.spec = spec
        self.size_hw = size_hw
        self.labels = None if labels is None else tuple(labels)
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def _item(self, index: int) -> np.ndarray:
        return self.read(index).tensor

    def read(self, index: int) -> _Read:
        path = self.paths[index]  # IndexError ends iteration
        return _read_file(path.parent, path, self.spec, self.size_hw, None)

    def gate_frames(self, input_name: str) -> Iterator[GateFrame]:
        """The frames as the gate consumes them: one read, preprocessed frame at a time."""
        for index, path in enumerate(self.paths):
            item = self.read(index)
            yield GateFrame(
                feed={input_name: np.ascontiguousarray(item.tensor)},
                name=path.name,
                letterbox=item.letterbox,
                label=None if self.labels is None else self.labels[index],
            )


class _Originals(_LazyFrames):
    """The original BGR frames of :class:`HeldoutFrames`, read on demand."""

    def __init__(self, held: HeldoutFrames) -> None:
        self.held = held

    def __len__(self) -> int:
        return len(self.held)

    def _item(self, index: int) -> np.ndarray:
        frame = self.held.read(index).frame
        if frame is None:
            raise ValueError(f"{self.held.paths[index].name} is a preprocessed tensor")
        return frame


@dataclass
class CalibrationSet:
    """Preprocessed calibration tensors, the (lazy) held-out frames for the gate, and a hash.

    ``heldout`` reads each tensor on demand (a :class:`HeldoutFrames`); ``heldout_frames[i]`` is
    the original BGR frame of ``heldout[i]``, empty when a held-out file is an already
    preprocessed ``.npy`` tensor. ``heldout_labelled`` says the frames carry labels.
    """

    calib: list[np.ndarray]  # each [1,C,H,W] (or [1,H,W,C]) float32, preprocessed
    heldout: Sequence[np.ndarray]
    heldout_frames: Sequence[np.ndarray]  # original BGR frames for the gate
    files: tuple[str, ...]
    sha256: str
    calib_files: tuple[str, ...] = field(default=())
    heldout_files: tuple[str, ...] = field(default=())
    heldout_dir: str = ""
    heldout_labelled: bool = False
    heldout_wanted: int = 0


def _expected_shape(spec: InputSpec, size_hw: tuple[int, int]) -> tuple[int, ...]:
    h, w = size_hw
    return (1, 3, h, w) if spec.layout == "NCHW" else (1, h, w, 3)


def _tensor(path: Path, spec: InputSpec, size_hw: tuple[int, int]) -> _Read:
    """The preprocessed tensor, original frame (None for a tensor) and geometry of one file."""
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
        return _Read(np.ascontiguousarray(tensor), None, None)
    frame = validate_frame(data, what=str(path))
    tensor, info = preprocess(frame, spec, size_hw)
    return _Read(tensor, frame, info)


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
    """(calibration files, held-out files): the last ``heldout`` files are held out. A folder
    without room for both keeps ``count`` frames for calibration and holds out the rest (at
    least :data:`FALLBACK_HELDOUT`, never more than ``heldout``); the gate then warns."""
    if len(files) < count + heldout:
        heldout = min(heldout, max(len(files) - count, FALLBACK_HELDOUT))
    available = len(files) - heldout
    wanted_min = min(int(count), MIN_CALIB_FRAMES)
    if available < max(1, wanted_min):
        raise CalibrationError(
            f"only {len(files)} frames: {heldout} are held out for validation, which leaves "
            f"{max(available, 0)} for calibration (at least {max(1, wanted_min)} needed, "
            f"{count} wanted)",
            fix=f"add at least {max(1, wanted_min) + heldout - len(files)} more frames, or a "
            f"labelled heldout/ folder to the bundle; {ADD_FRAMES_FIX}",
            path=directory,
        )
    calib_paths = files[: min(int(count), available)]
    held_paths = files[len(files) - heldout :] if heldout else []
    return calib_paths, held_paths


def _read_file(
    directory: Path, path: Path, spec: InputSpec, size_hw: tuple[int, int], digest: Any
) -> _Read:
    """Read (and, with a ``digest``, hash) one frame file; errors name the file and the fix."""
    try:
        if digest is not None:
            digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
        return _tensor(path, spec, size_hw)
    except InvalidFrame as exc:
        raise CalibrationError(
            f"unreadable frame file {path.name}: {exc.message}",
            fix="delete or replace it (every file in the folder must be a readable "
            "JPEG/PNG/BMP image or .npy array)",
            path=directory,
        ) from exc
    except OSError as exc:
        raise CalibrationError(
            f"cannot read frame file {path.name}: {exc}",
            fix="check the file's permissions or replace it",
            path=directory,
        ) from exc


def _labelled_heldout(bundle: ModelBundle) -> HeldoutLabels | None:
    """The bundle's ``heldout/``: labelled when it has ``labels.json`` and the task has a
    labelled metric (classify, detect), else its images unlabelled."""
    directory = bundle.heldout_dir
    if directory is None:
        return None
    task = bundle.config.task
    if task in ("classify", "detect") and (directory / LABELS_FILE).is_file():
        return load_heldout_labels(directory, task, bundle.labels)
    if (directory / LABELS_FILE).is_file():
        log.warning("%s: a %s model has no labelled metric; labels are ignored", directory, task)
    return heldout_images(directory)


def _check_heldout(held: HeldoutFrames, digest: Any, progress: ProgressFn) -> bool:
    """Read each held-out file once (hash it, check it decodes and its boxes fit) and drop it;
    True when every one is an image or a raw frame (so original frames exist)."""
    originals = True
    for index, path in enumerate(held.paths):
        item = _read_file(path.parent, path, held.spec, held.size_hw, digest)
        originals = originals and item.frame is not None
        label = None if held.labels is None else held.labels[index]
        if label is not None and item.frame is not None:
            check_boxes_inside(label, item.frame.shape[1], item.frame.shape[0], path)
        progress("load-heldout", (index + 1) / len(held.paths), path.name)
    return originals


def _load_calib(
    directory: Path,
    paths: list[Path],
    spec: InputSpec,
    size_hw: tuple[int, int],
    *,
    digest: Any,
    progress: ProgressFn,
) -> list[np.ndarray]:
    calib: list[np.ndarray] = []
    for index, path in enumerate(paths):
        calib.append(_read_file(directory, path, spec, size_hw, digest).tensor)
        progress("load-calibration", (index + 1) / len(paths), path.name)
    return calib


def _plan(
    directory: Path, files: list[Path], bundle: ModelBundle, count: int, heldout: int
) -> tuple[list[Path], list[Path], HeldoutLabels | None]:
    """(calibration files, held-out files, labels): a bundle's labelled heldout/ when it has
    one (all calibration-folder frames may calibrate), else the calibration folder's tail."""
    labelled = _labelled_heldout(bundle)
    if labelled is None:
        return (*_split_files(directory, files, count, heldout), None)
    if heldout < 1:
        raise ModelError(
            "the bundle has a heldout/ folder but calibration.heldout_frames is 0",
            fix="set build.calibration.heldout_frames > 0 in the device profile",
            path=labelled.labels_path,
        )
    used = min(heldout, len(labelled.files))
    labels = None if labelled.labels is None else labelled.labels[:used]
    kept = HeldoutLabels(labelled.directory, labelled.files[:used], labels, labelled.labels_path)
    return files[: int(count)], list(kept.files), kept


def load_calibration_set(
    directory: Path,
    bundle: ModelBundle,
    size_hw: tuple[int, int],
    count: int,
    heldout: int,
    *,
    progress: ProgressFn = no_progress,
) -> CalibrationSet:
    """Load up to ``count`` calibration frames; the held-out frames are the bundle's labelled
    ``heldout/`` (the first ``heldout`` images) or else the last ``heldout`` files of
    ``directory``, checked now and read lazily by the gate.

    Raises :class:`CalibrationError` naming the directory (or file) and the fix when the folder
    is missing, empty, has too few files or holds an unreadable one, and
    :class:`~agent.core.errors.ModelError` for a malformed ``heldout/labels.json``.
    """
    directory = Path(directory)
    files = _list_files(directory)
    calib_paths, held_paths, labelled = _plan(directory, files, bundle, count, max(0, heldout))
    spec = bundle.config.input
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    digest = hashlib.sha256()
    calib = _load_calib(directory, calib_paths, spec, size_hw, digest=digest, progress=progress)
    source = str(labelled.directory) if labelled else str(directory)
    labels = None if labelled is None else labelled.labels
    held = HeldoutFrames(held_paths, spec, size_hw, labels, source)
    if labels is not None and labelled is not None:
        digest.update(f"labels\0{sha256_file(labelled.labels_path)}\n".encode())
    originals = _check_heldout(held, digest, progress)
    recipe = {
        "input": spec.model_dump(mode="json"),
        "size_hw": list(size_hw),
        "calib": [p.name for p in calib_paths],
        "heldout": [p.name for p in held_paths],
        "labelled": labels is not None,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return CalibrationSet(
        calib=calib,
        heldout=held,
        heldout_frames=_Originals(held) if originals else (),
        files=tuple(p.name for p in [*calib_paths, *held_paths]),
        sha256=digest.hexdigest(),
        calib_files=tuple(p.name for p in calib_paths),
        heldout_files=tuple(p.name for p in held_paths),
        heldout_dir=source,
        heldout_labelled=labels is not None,
        heldout_wanted=max(0, int(heldout)),
    )
