"""Newest-frame-wins: a camera that keeps running while inference is busy.

A camera delivers frames at its own rate whether or not anyone is ready for them. If the
check-in loop simply read them in order, every slow inference would add to a queue and the gate
would judge the past: after a minute at 30 fps with 40-ms inference, decisions would lag by
seconds. ``NewestFrameSource`` reads the camera on its own thread and keeps only the latest
frame; the loop always gets the newest one, and the ones it could not look at are counted as
dropped. Frame-to-decision latency is then at most one inference plus one frame period, however
long the gate runs. (The same policy as a ZeroMQ ``CONFLATE`` socket between a capture process
and the check-in process.)

Replayed stills are one presentation per frame and must not be dropped, so the service wraps
only live cameras, and replays when ``capture.realtime`` asks for camera behaviour.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from device.capture import Frame, FrameSource

log = logging.getLogger(__name__)


class NewestFrameSource:
    """Wraps a source; ``frames()`` yields only the newest frame each time the consumer asks."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.one_frame_per_visit = False  # some frames are dropped on purpose
        self.captured = 0
        self.dropped = 0
        self._latest: Frame | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="camera", daemon=True)

    def _read(self) -> None:
        try:
            for frame in self.source.frames():
                with self._ready:
                    if self._latest is not None:
                        self.dropped += 1  # the loop never saw it: it was busy
                    self._latest = frame
                    self.captured += 1
                    self._ready.notify()
                if self._stop.is_set():
                    break
        except BaseException as exc:  # hand the camera's failure to the consumer
            self._error = exc
        finally:
            with self._ready:
                self._ended = True
                self._ready.notify()

    def frames(self) -> Iterator[Frame]:
        """The newest frame whenever the consumer is ready, until the camera ends."""
        self._thread.start()
        while True:
            with self._ready:
                while self._latest is None and not self._ended:
                    self._ready.wait(0.5)
                frame, self._latest = self._latest, None
                ended = self._ended
            if frame is not None:
                yield frame
            elif ended:
                if self._error is not None:
                    raise self._error
                return

    def request_stop(self) -> None:
        """End ``frames()`` soon, from any thread: the camera stops after the frame it is
        reading, or at once while it waits to reopen."""
        self._stop.set()
        request_stop = getattr(self.source, "request_stop", None)
        if request_stop is not None:
            request_stop()

    def close(self) -> None:
        """Stop reading and release the camera."""
        self._stop.set()
        self.source.close()
