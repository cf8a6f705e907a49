"""GStreamer sources: an ``appsink`` pipeline through OpenCV, and the Jetson pipeline strings
(``nvarguscamerasrc`` CSI capture, NVDEC RTSP decoding)."""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

import cv2
import numpy as np

from agent.core.errors import SourceError
from agent.pipeline.sources.base import Source, SourceUnavailable
from agent.pipeline.sources.opencv import release_capture


@functools.cache
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (from its build information)."""
    return bool(re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.MULTILINE))


GSTREAMER_MISSING = "OpenCV has no GStreamer support; install JetPack's python3-opencv"


class GStreamerSource(Source):
    """A GStreamer pipeline string ending in ``appsink`` (``cv2.CAP_GSTREAMER``). FAILED at
    once, with :data:`GSTREAMER_MISSING` as the reason, when OpenCV lacks GStreamer."""

    kind = "gstreamer pipeline"
    live = True

    def __init__(
        self, name: str, pipeline: str, *, gstreamer: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, pipeline, **kwargs)
        self._gstreamer = gstreamer
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        available = self._gstreamer if self._gstreamer is not None else opencv_has_gstreamer()
        if not available:
            raise SourceUnavailable(GSTREAMER_MISSING)
        if "appsink" not in self.uri:
            raise SourceUnavailable(
                "GStreamer pipeline does not end in appsink",
                fix="end it with '! appsink drop=true max-buffers=1 sync=false'",
            )
        cap = cv2.VideoCapture(self.uri, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            release_capture(cap)
            raise SourceError(
                f"GStreamer pipeline did not start: {self.display_uri}",
                fix="try it with gst-launch-1.0 (replace appsink with fakesink)",
            )
        self._cap = cap

    def _read(self) -> np.ndarray | None:
        assert self._cap is not None
        ok, img = self._cap.read()
        return img if ok else None

    def _release(self) -> None:
        release_capture(self._cap)
        self._cap = None


#
# Element names, caps and properties follow NVIDIA Jetson Linux Developer Guide, "Accelerated
# GStreamer" (https://docs.nvidia.com/jetson/archives/r35.6.1/DeveloperGuide/SD/Multimedia/
# AcceleratedGstreamer.html): nvarguscamerasrc (sensor-id) → video/x-raw(memory:NVMM) NV12 →
# nvvidconv (flip-method 0-7) for CSI capture; nvv4l2decoder (the gst-v4l2 H.264/H.265 decoder
# that replaced gst-omx in r34.1) after rtph26Xdepay ! h26Xparse for RTSP. nvvidconv copies out
# of NVMM to BGRx; videoconvert makes the BGR that OpenCV's appsink expects.

_APPSINK_TAIL = (
    "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
    "appsink drop=true max-buffers=1 sync=false"
)


def gst_csi_pipeline(sensor_id: int, width: int, height: int, fps: int, flip: int = 0) -> str:
    """A Jetson CSI camera through ``nvarguscamerasrc``, BGR frames into OpenCV's appsink."""
    if sensor_id < 0 or width <= 0 or height <= 0 or fps <= 0:
        raise ValueError("sensor_id >= 0 and positive width, height and fps are required")
    if not 0 <= flip <= 7:
        raise ValueError("flip-method must be 0-7 (see nvvidconv)")
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
        f"nvvidconv flip-method={flip} ! {_APPSINK_TAIL}"
    )


def gst_rtsp_hw_pipeline(
    url: str, codec: Literal["h264", "h265"] = "h264", latency_ms: int = 200
) -> str:
    """An RTSP H.264/H.265 stream decoded by the Jetson's NVDEC (``nvv4l2decoder``)."""
    if codec not in ("h264", "h265"):
        raise ValueError("codec must be 'h264' or 'h265'")
    if not url.startswith(("rtsp://", "rtsps://")) or '"' in url:
        raise ValueError("url must be an rtsp:// or rtsps:// URL without double quotes")
    if latency_ms < 0:
        raise ValueError("latency_ms must be >= 0")
    location = f'"{url}"' if re.search(r"[\s!]", url) else url
    return (
        f"rtspsrc location={location} latency={latency_ms} ! rtp{codec}depay ! {codec}parse ! "
        f"nvv4l2decoder ! nvvidconv ! {_APPSINK_TAIL}"
    )
