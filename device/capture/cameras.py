"""Which camera the config names: one place that builds it, for the capture process and for
``run --single-process``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from device.capture import Frame, FrameSource
from device.capture.live import PiCameraSource, V4L2Source
from device.config import CaptureConfig


def open_camera(capture: CaptureConfig, alarm: CameraAlarm | None = None) -> FrameSource:
    """The camera the config names (live cameras open lazily in ``frames()`` and reopen by
    themselves); ``alarm`` hears a live camera's faults and every frame it reads."""
    size = (capture.width, capture.height)
    fps = capture.fps or 15.0
    on_fault = alarm.fault if alarm else None
    live: FrameSource
    if capture.source == "picamera2":
        live = PiCameraSource(size=size, fps=fps, freeze_s=capture.freeze_s, on_fault=on_fault)
    elif capture.source == "v4l2":
        live = V4L2Source(capture.device, size=size, fps=fps, freeze_s=capture.freeze_s,
                          on_fault=on_fault)
    else:
        # Imported here: replay decodes with OpenCV, which a Pi camera's capture process
        # (and the ~30 MB it costs) never needs.
        from device.capture.replay import ReplaySource

        assert capture.path is not None  # validated by CaptureConfig
        return ReplaySource(capture.path, fps=capture.fps, loop=capture.loop)
    return alarm.watch(live) if alarm else live


def is_paced(capture: CaptureConfig) -> bool:
    """Replayed stills not asked to behave like a camera: every frame must be judged."""
    return capture.source == "replay" and not capture.realtime


class CameraAlarm:
    """Turns camera faults into one ``camera_lost`` alarm per outage.

    A camera that stays away fails every reopen attempt; the gateway needs to hear that it is
    gone once, and again only if it comes back (a frame is read) and then fails again.
    """

    def __init__(self, raise_alarm: Callable[[str], None]) -> None:
        self.raise_alarm = raise_alarm
        self.down = False
        self.alarms = 0

    def fault(self, reason: str) -> None:
        """A camera fault (open or read failed, frozen): alarm if the camera was up."""
        if not self.down:
            self.down = True
            self.alarms += 1
            self.raise_alarm(reason)

    def frame(self) -> None:
        """A frame was read: the camera is up again."""
        self.down = False

    def watch(self, source: FrameSource) -> FrameSource:
        """``source`` with every frame it yields counted as the camera being up."""
        return _Watched(source, self)


class _Watched:
    """A frame source whose frames tell a ``CameraAlarm`` the camera works."""

    def __init__(self, source: FrameSource, alarm: CameraAlarm) -> None:
        self.source = source
        self.alarm = alarm
        self.one_frame_per_visit = source.one_frame_per_visit

    def frames(self) -> Iterator[Frame]:
        for frame in self.source.frames():
            self.alarm.frame()
            yield frame

    def request_stop(self) -> None:
        request_stop = getattr(self.source, "request_stop", None)
        if request_stop is not None:
            request_stop()

    def close(self) -> None:
        self.source.close()
