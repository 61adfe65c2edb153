"""Frame sources behind one interface: replay (folder/video/playlist) now; picamera2 and V4L2 next.

A source yields :class:`Frame` objects; the check-in loop never knows which camera it reads.
Imports config and bus only; OpenCV only inside the sources that decode files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image (BGR, uint8, H×W×3) with its capture time and origin."""

    image: np.ndarray
    ts: float
    index: int
    #: For replayed frames, the image's path relative to the replay root (rehearsal ground truth).
    ref: str | None = None


class FrameSource(Protocol):
    """What the check-in loop needs from a camera."""

    #: True when every frame is a separate presentation (replayed stills): the loop then reports
    #: frames without a face as ``no_face``. A live camera sees empty hallways and stays silent.
    one_frame_per_visit: bool

    def frames(self) -> Iterator[Frame]:
        """Frames in capture order until the source ends (a live camera never ends)."""
        ...

    def close(self) -> None:
        """Release the camera or file."""
        ...
