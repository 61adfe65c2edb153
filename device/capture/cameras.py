"""Which camera the config names: one place that builds it, for the capture process and for
``run --single-process``."""

from __future__ import annotations

from collections.abc import Callable

from device.capture import FrameSource
from device.capture.live import PiCameraSource, V4L2Source
from device.capture.replay import ReplaySource
from device.config import CaptureConfig


def open_camera(capture: CaptureConfig,
                on_fault: Callable[[str], None] | None = None) -> FrameSource:
    """The camera the config names, unwrapped (live cameras open lazily in ``frames()``);
    ``on_fault(reason)`` hears each failure of a live camera (it is reopened by itself)."""
    size = (capture.width, capture.height)
    fps = capture.fps or 15.0
    if capture.source == "picamera2":
        return PiCameraSource(size=size, fps=fps, freeze_s=capture.freeze_s, on_fault=on_fault)
    if capture.source == "v4l2":
        return V4L2Source(capture.device, size=size, fps=fps, freeze_s=capture.freeze_s,
                          on_fault=on_fault)
    assert capture.path is not None  # validated by CaptureConfig
    return ReplaySource(capture.path, fps=capture.fps, loop=capture.loop)


def is_paced(capture: CaptureConfig) -> bool:
    """Replayed stills not asked to behave like a camera: every frame must be judged."""
    return capture.source == "replay" and not capture.realtime
