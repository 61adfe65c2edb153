"""The capture process: reads the camera and publishes frames, newest wins."""

from __future__ import annotations

import logging
import os
import threading
import time

import zmq

from device import bus as busmod
from device.bus import Bus
from device.capture import Frame, FrameSource
from device.capture.bus import encode_frame
from device.capture.cameras import CameraAlarm, is_paced, open_camera
from device.config import CaptureConfig

log = logging.getLogger(__name__)

#: After a replay ends, the end marker is repeated this long so a check-in process that is
#: restarting at that moment still hears it.
END_REPEAT_S = 10.0


class _Publisher:
    """Encodes frames with this run's id and position, so a resend is recognisable."""

    def __init__(self, bus: Bus, visit: bool) -> None:
        self.sock = busmod.newest_wins_publisher(bus, busmod.FRAMES)
        self.run = f"{os.getpid()}-{time.monotonic_ns()}"
        self.visit = visit
        self.position = -1
        self.last: bytes | None = None
        self.published = 0

    def publish(self, frame: Frame) -> None:
        self.position += 1
        self.last = encode_frame(frame, run=self.run, position=self.position,
                                        visit=self.visit)
        self.resend()

    def resend(self) -> None:
        assert self.last is not None
        self.sock.send(self.last)
        self.published += 1

    def end(self) -> None:
        self.sock.send(encode_frame(None))

    @property
    def key(self) -> list[object]:
        return [self.run, self.position]


def run_capture(capture: CaptureConfig, bus: Bus, stop: threading.Event,
                camera_alarm: CameraAlarm | None = None) -> dict[str, int]:
    """Publish frames until the source ends (replay) or ``stop``; returns counters.
    ``camera_alarm`` hears the live camera's faults and every frame read."""
    alarm = camera_alarm or CameraAlarm(lambda reason: None)
    source = open_camera(capture, alarm)
    paced = is_paced(capture)
    # Only paced stills are one presentation per frame; a replay asked to behave like a camera
    # (capture.realtime) reports no event for an empty frame, like a camera.
    out = _Publisher(bus, visit=bool(source.one_frame_per_visit) and paced)
    log.info("capture: %s%s", capture.source,
             " (paced: one frame per request from the check-in)" if paced else "")
    request_stop = getattr(source, "request_stop", None)
    if request_stop is not None:  # a live camera may wait in a reopen back-off: wake it
        threading.Thread(target=lambda: (stop.wait(), request_stop()), name="capture-stop",
                         daemon=True).start()
    try:
        if paced:
            _serve_paced(source, out, bus, stop)
        else:
            for frame in source.frames():
                out.publish(frame)
                if stop.is_set():
                    break
        if not stop.is_set():
            log.info("source ended after %d frames", out.position + 1)
            deadline = time.monotonic() + END_REPEAT_S
            while not stop.is_set() and time.monotonic() < deadline:
                out.end()
                stop.wait(0.2)
    finally:
        source.close()
        out.sock.close()
    return {"frames": out.position + 1, "published": out.published,
            "camera_alarms": alarm.alarms}


def _serve_paced(source: FrameSource, out: _Publisher, bus: Bus, stop: threading.Event) -> None:
    """One frame per credit: the next one when the credit names the last frame sent, the same
    one again otherwise (the check-in restarted, or the frame was lost before it subscribed)."""
    credits = bus.bind(zmq.PULL, busmod.CREDITS)
    frames = iter(source.frames())
    ended = False
    try:
        while not stop.is_set():
            credit = busmod.recv_json(credits, 200)
            if credit is None:
                continue
            if ended:
                out.end()
                if out.last is None or credit.get("after") == out.key:
                    return  # the check-in judged the last frame and heard the end
                out.resend()
                continue
            if out.last is not None and credit.get("after") != out.key:
                out.resend()
                continue
            frame = next(frames, None)
            if frame is None:
                ended = True
                out.end()
                continue
            out.publish(frame)
    finally:
        credits.close()
