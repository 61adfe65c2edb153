"""Frames from the capture process: the check-in process's camera (see
:mod:`device.bus`)."""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from device import bus as busmod
from device.bus import Bus
from device.capture import Frame

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")  # length of the JSON header in a frame message

#: Without a frame for this long, ask again: the credit or the frame was lost (the capture
#: process was restarting, or had not yet seen this subscriber).
ASK_AGAIN_S = 0.5


class BusFrameSource:
    """Reads the capture process's frames, newest wins.

    Paced (replayed stills, where every frame is one applicant's presentation): each frame is
    asked for with a credit naming the last one judged, so none is skipped and none judged
    twice, however fast the capture process could read. Otherwise (a camera) the check-in
    simply takes the newest frame whenever it is ready; the rest were never worth judging.
    """

    def __init__(self, bus: Bus, paced: bool, stop: threading.Event) -> None:
        self.paced = paced
        self.stop = stop
        #: Set from each frame's header: replayed stills are one presentation per frame.
        self.one_frame_per_visit = paced
        self._frames = busmod.newest_wins_subscriber(bus, busmod.FRAMES)
        self._credits = busmod.sender(bus, busmod.CREDITS) if paced else None

    def _ask(self, last: list[object] | None) -> None:
        if self._credits is not None:
            busmod.send_json(self._credits, {"after": last})

    def frames(self) -> Iterator[Frame]:
        """Frames until the capture process says its source ended, or ``stop`` is set."""
        last: list[object] | None = None  # [capture run, position] of the last frame judged
        self._ask(last)
        while not self.stop.is_set():
            if not self._frames.poll(int(ASK_AGAIN_S * 1000)):
                self._ask(last)
                continue
            header, frame = decode_frame(self._frames.recv(zmq.NOBLOCK))
            if frame is None:
                log.info("the capture process says its source has ended")
                return
            key = [header.get("run"), header.get("position")]
            if key == last:
                continue  # a resend of the frame already judged
            last = key
            self.one_frame_per_visit = bool(header.get("visit", False))
            yield frame
            self._ask(last)

    def close(self) -> None:
        """Close the sockets."""
        self._frames.close()
        if self._credits is not None:
            self._credits.close()


def encode_frame(frame: Frame | None, **extra: Any) -> bytes:
    """One frame as one message (None: the source has ended); ``extra`` joins the header."""
    if frame is None:
        header: dict[str, Any] = {"end": True, "sent": time.monotonic()}
        pixels = b""
    else:
        image = np.ascontiguousarray(frame.image)
        header = {"index": frame.index, "ts": frame.ts, "ref": frame.ref,
                  "shape": list(image.shape), "dtype": str(image.dtype),
                  "sent": time.monotonic(), **extra}
        pixels = image.tobytes()
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _HEADER.pack(len(encoded)) + encoded + pixels


def decode_frame(message: bytes) -> tuple[dict[str, Any], Frame | None]:
    """The header and the frame of a frame message (frame None for the end marker)."""
    (length,) = _HEADER.unpack_from(message)
    header = json.loads(message[_HEADER.size:_HEADER.size + length])
    if header.get("end"):
        return header, None
    pixels = memoryview(message)[_HEADER.size + length:]
    image = np.frombuffer(pixels, dtype=header["dtype"]).reshape(header["shape"])
    return header, Frame(image=image, ts=header["ts"], index=header["index"], ref=header["ref"])
