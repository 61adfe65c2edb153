"""Replay source: still images from a folder or playlist, or a video file, at a chosen frame rate.

Used by the demo, rehearsals and benchmarks in place of the Pi camera. Images that cannot be
decoded are logged and skipped: one bad file must not stop a gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from device.capture import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg"}


def list_images(root: Path) -> list[Path]:
    """All image files under ``root``, sorted by path so replays are deterministic."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to BGR uint8 (grey images are expanded); None if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return image


class ReplaySource:
    """Frames from ``path``: a folder of images, a ``.txt`` playlist of image paths, or a video.

    ``fps`` paces frames in real time (0 = as fast as the consumer reads); ``loop`` restarts at
    the end, like a camera that never stops.
    """

    def __init__(self, path: Path, fps: float = 0.0, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"replay source {self.path} does not exist")
        self.fps = fps
        self.loop = loop
        self.is_video = self.path.suffix.lower() in VIDEO_SUFFIXES
        self.one_frame_per_visit = not self.is_video
        self._closed = False

    def _image_paths(self) -> tuple[Path, list[Path]]:
        if self.path.is_dir():
            return self.path, list_images(self.path)
        if self.path.suffix.lower() == ".txt":
            base = self.path.parent
            lines = [ln.strip() for ln in self.path.read_text().splitlines()]
            return base, [base / ln for ln in lines if ln and not ln.startswith("#")]
        return self.path.parent, [self.path]

    def _raw(self) -> Iterator[tuple[np.ndarray, str | None]]:
        if self.is_video:
            cap = cv2.VideoCapture(str(self.path))
            try:
                while not self._closed:
                    ok, image = cap.read()
                    if not ok:
                        return
                    yield image, None
            finally:
                cap.release()
            return
        base, paths = self._image_paths()
        for p in paths:
            if self._closed:
                return
            image = read_image(p)
            if image is None:
                log.warning("replay: cannot decode %s, skipped", p)
                continue
            try:
                ref = str(p.relative_to(base))
            except ValueError:
                ref = str(p)
            yield image, ref

    def frames(self) -> Iterator[Frame]:
        """Yield frames paced at ``fps``; timestamps are real capture times."""
        index = 0
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        next_due = time.monotonic()
        while True:
            produced = False
            for image, ref in self._raw():
                produced = True
                if period:
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_due = max(next_due + period, time.monotonic() - period)
                yield Frame(image=image, ts=time.time(), index=index, ref=ref)
                index += 1
            if not (self.loop and produced) or self._closed:
                return

    def close(self) -> None:
        """Stop producing frames."""
        self._closed = True
