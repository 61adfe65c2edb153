"""Live cameras: the Pi camera (picamera2) and USB/V4L2 cameras (OpenCV), one behaviour.

A door camera must never silently stop. Both back-ends share :class:`LiveSource`, which notices
a camera that errors, disappears, or freezes (the same picture for ``freeze_s`` seconds: a hung
driver often keeps returning its last buffer), logs it, tells the caller through ``on_fault``
(so the gateway hears about it), and reopens it with back-off until it comes back.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from device.capture import Frame

log = logging.getLogger(__name__)


class CameraFault(RuntimeError):
    """The camera stopped giving usable frames."""


class LiveSource:
    """Frames from a live camera, reopened on failure; subclasses open/read/close it."""

    one_frame_per_visit = False  # a live camera sees empty hallways: no event without a face

    def __init__(self, freeze_s: float = 5.0, reopen_max_s: float = 30.0,
                 on_fault: Callable[[str], None] | None = None) -> None:
        self.freeze_s = freeze_s
        self.reopen_max_s = reopen_max_s
        self.on_fault = on_fault or (lambda reason: None)
        self.faults = 0
        self._closed = False
        self._stopping = threading.Event()  # wakes a reopen back-off at once

    # back-end hooks ------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _read(self) -> np.ndarray:
        """One BGR frame; raise CameraFault (or anything) when the camera fails."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    # shared behaviour ----------------------------------------------------------------------
    def _fault(self, reason: str) -> None:
        self.faults += 1
        log.error("camera fault: %s; reopening", reason)
        self.on_fault(reason)
        try:
            self._release()
        except Exception:  # releasing a broken camera may fail too; we reopen regardless
            log.debug("camera release failed", exc_info=True)

    def _open_with_backoff(self) -> bool:
        delay = 0.5
        while not self._closed:
            try:
                self._open()
                return True
            except Exception as exc:
                log.error("camera cannot be opened (%s); retrying in %.1fs", exc, delay)
                self.on_fault(f"open failed: {exc}")
                self._stopping.wait(delay)
                delay = min(delay * 2, self.reopen_max_s)
        return False

    def frames(self) -> Iterator[Frame]:
        """Frames until ``close()``; faults are reported and the camera reopened."""
        index = 0
        while not self._closed and self._open_with_backoff():
            last_digest, same_since = b"", time.monotonic()
            while not self._closed:
                try:
                    image = self._read()
                except Exception as exc:
                    self._fault(f"read failed: {exc}")
                    break
                # A cheap fingerprint of a subsampled frame: sensor noise changes it every
                # frame on a working camera, so an identical one for seconds means frozen.
                digest = hashlib.blake2b(image[::8, ::8].tobytes(), digest_size=16).digest()
                now = time.monotonic()
                if digest != last_digest:
                    last_digest, same_since = digest, now
                elif now - same_since > self.freeze_s:
                    self._fault(f"frozen: identical frames for {now - same_since:.1f}s")
                    break
                yield Frame(image=image, ts=time.time(), index=index)
                index += 1

    def request_stop(self) -> None:
        """Make ``frames()`` end after the frame being read (or at once, while reopening);
        safe from another thread, unlike ``close()``, which releases the camera."""
        self._closed = True
        self._stopping.set()

    def close(self) -> None:
        """Stop and release the camera."""
        self.request_stop()
        try:
            self._release()
        except Exception:
            log.debug("camera release failed", exc_info=True)


class PiCameraSource(LiveSource):
    """The Raspberry Pi camera through picamera2 (libcamera).

    picamera2 only imports on Raspberry Pi OS, so it is imported when the camera opens;
    ``camera_factory`` replaces ``picamera2.Picamera2`` in tests with an object that follows
    the same call sequence (create_video_configuration → configure → start → capture_array →
    stop → close).
    """

    def __init__(self, size: tuple[int, int] = (1280, 720), fps: float = 15.0,
                 camera_num: int = 0, camera_factory: Callable[..., Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.fps = fps
        self.camera_num = camera_num
        self.camera_factory = camera_factory
        self._camera: Any = None

    def _open(self) -> None:
        factory = self.camera_factory
        if factory is None:
            from picamera2 import Picamera2  # only exists on Raspberry Pi OS

            factory = Picamera2
        camera = factory(self.camera_num)
        # RGB888 is stored B, G, R in memory: exactly OpenCV's BGR, no conversion needed.
        config = camera.create_video_configuration(
            main={"size": tuple(self.size), "format": "RGB888"},
            controls={"FrameRate": float(self.fps)})
        camera.configure(config)
        camera.start()
        self._camera = camera

    def _read(self) -> np.ndarray:
        if self._camera is None:
            raise CameraFault("camera not open")
        frame = self._camera.capture_array("main")
        if frame is None or frame.ndim != 3:
            raise CameraFault("camera returned no image")
        return frame[:, :, :3]

    def _release(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()


class V4L2Source(LiveSource):
    """A USB (UVC) camera through OpenCV's V4L2 back-end (or any OpenCV-readable source)."""

    def __init__(self, device: str | int = "/dev/video0", size: tuple[int, int] = (1280, 720),
                 fps: float = 15.0, api: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = device
        self.size = size
        self.fps = fps
        self.api = api  # None: cv2.CAP_V4L2
        self._cap: Any = None  # cv2.VideoCapture once open

    def _open(self) -> None:
        # OpenCV loads only here: a Pi camera's capture process never pays its ~30 MB.
        import cv2

        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2 if self.api is None else self.api)
        if not cap.isOpened():
            cap.release()
            raise CameraFault(f"cannot open {self.device}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of stale ones
        self._cap = cap

    def _read(self) -> np.ndarray:
        if self._cap is None:
            raise CameraFault("camera not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise CameraFault(f"{self.device} gave no frame (unplugged?)")
        return image

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
