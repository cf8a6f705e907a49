"""Sources read through ``cv2.VideoCapture``/``cv2.imread``: video files, image folders and
live V4L2 / RTSP / MJPEG-over-HTTP captures."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from agent.core.errors import SourceError
from agent.pipeline.sources.base import EndOfStream, Source, SourceUnavailable


def release_capture(cap: cv2.VideoCapture | None) -> None:
    """Release a capture, ignoring OpenCV's complaints about one already gone."""
    if cap is not None:
        with contextlib.suppress(cv2.error):
            cap.release()


@functools.cache
def opencv_has_ffmpeg() -> bool:
    names = {cv2.videoio_registry.getBackendName(b) for b in cv2.videoio_registry.getBackends()}
    return "FFMPEG" in names


class VideoFileSource(Source):
    """A video file through ``cv2.VideoCapture``. BLOCK policy (no frame is lost). ENDED at the
    end unless ``loop``. Paced to the file's fps when ``realtime``, to ``fps_cap`` when given,
    else as fast as the consumer takes frames."""

    kind = "video file"
    live = False

    def __init__(
        self, name: str, path: str | Path, *, loop: bool = False, realtime: bool = False,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        kwargs.setdefault("max_attempts", 3)
        super().__init__(name, str(path), **kwargs)
        self.path = Path(path)
        self.loop = loop
        self.realtime = realtime
        self.file_fps: float | None = None
        self.loops = 0
        self._cap: cv2.VideoCapture | None = None
        self._since_rewind = 0

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceError(
                f"video file not found: {self.path}", fix="check the source's uri path"
            )
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            release_capture(cap)
            raise SourceError(
                f"OpenCV cannot decode {self.path}",
                fix="use a container/codec FFmpeg reads (mp4/h264, mkv, avi/mjpeg)",
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.file_fps = fps if 0.0 < fps < 1000.0 else None
        self._cap = cap
        self._since_rewind = 0

    def _rate(self) -> float | None:
        if self.realtime and self.file_fps:
            return min(self.file_fps, self.fps_cap) if self.fps_cap else self.file_fps
        return self.fps_cap

    def _capture(self) -> cv2.VideoCapture:
        assert self._cap is not None
        return self._cap

    def _read(self) -> np.ndarray | None:
        ok, img = self._capture().read()
        if ok:
            self._since_rewind += 1
            return img
        if not self.loop:
            raise EndOfStream(f"end of file after {self._frames} frames")
        if self._since_rewind == 0:
            raise EndOfStream("file has no decodable frames; nothing to loop")
        self.loops += 1
        release_capture(self._cap)
        self._cap = None
        self._open()  # reopening is the one rewind every container supports
        ok, img = self._capture().read()
        if not ok:
            raise EndOfStream("file has no decodable frames after rewinding")
        self._since_rewind = 1
        return img

    def _release(self) -> None:
        release_capture(self._cap)
        self._cap = None


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageFolderSource(Source):
    """The images of a folder in name order (BLOCK policy); loops when ``loop``."""

    kind = "image folder"
    live = False

    def __init__(self, name: str, folder: str | Path, *, loop: bool = False, **kwargs: Any):
        kwargs.setdefault("max_attempts", 3)
        super().__init__(name, str(folder), **kwargs)
        self.folder = Path(folder)
        self.loop = loop
        self._files: list[Path] = []
        self._pos = 0

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}", fix="check the uri")
        files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise SourceError(
                f"no images in {self.folder}",
                fix=f"put files with one of {sorted(IMAGE_SUFFIXES)} there",
            )
        self._files = files
        self._pos = 0

    def _read(self) -> np.ndarray | None:
        if self._pos >= len(self._files):
            if not self.loop:
                raise EndOfStream(f"end of folder after {len(self._files)} images")
            self._pos = 0
        path = self._files[self._pos]
        self._pos += 1
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            # an unreadable file is a bad frame, not a dead source: hand validation an empty one
            return np.empty((0, 0, 3), np.uint8)
        return img

    def _release(self) -> None:
        self._files = []


class OpenCvStreamSource(Source):
    """A live capture through OpenCV: ``v4l2`` (``/dev/videoN`` or an index, V4L2 backend),
    ``rtsp`` and ``http`` (MJPEG over HTTP(S); FFmpeg backend with open/read timeouts, so a
    dead peer ends a read within ``stall_timeout_s``). NEWEST_WINS; retries forever."""

    live = True
    pacing = "skip"

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        kind: Literal["v4l2", "rtsp", "http"],
        open_timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, uri, **kwargs)
        self.kind = kind
        self.open_timeout_s = open_timeout_s or max(2.0, 2.0 * self.stall_timeout_s)
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        if self.kind == "v4l2":
            cap = self._open_v4l2()
        else:
            if not opencv_has_ffmpeg():
                raise SourceUnavailable(
                    f"OpenCV has no FFmpeg backend; cannot read {self.kind} streams",
                    fix="install an OpenCV build with FFmpeg "
                    "(opencv-python, or JetPack's python3-opencv)",
                )
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(100, int(self.stall_timeout_s * 1000)),
            ]  # fmt: skip
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
            if not cap.isOpened():
                release_capture(cap)
                raise SourceError(
                    f"cannot connect to {self.display_uri} (unreachable, refused, or not "
                    f"{'an MJPEG' if self.kind == 'http' else 'an RTSP'} stream)"
                )
        if self.size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self._cap = cap

    def _open_v4l2(self) -> cv2.VideoCapture:
        target: int | str
        if self.uri.isdigit():
            target = int(self.uri)
            device = Path(f"/dev/video{target}")
        else:
            target = self.uri
            device = Path(self.uri)
        if not device.exists():
            raise SourceError(f"camera {device} not found", fix="plug the camera in or fix the uri")
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            release_capture(cap)
            raise SourceError(
                f"cannot open camera {device}: busy (another process has it) or not a "
                "capture device",
                fix="stop the other user (`fuser` on the device) or pick the capture node",
            )
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(100, int(self.stall_timeout_s * 1000)))
        return cap

    def _read(self) -> np.ndarray | None:
        assert self._cap is not None
        ok, img = self._cap.read()
        return img if ok else None

    def _release(self) -> None:
        release_capture(self._cap)
        self._cap = None
