"""What a gate's camera sees: the empty hallway, and an applicant's frame as captured.

A face photo taken too dark, blurred, cut off at the frame's edge or re-captured, with the
participant card held up beside it (the device's own card renderer, so the gate reads its QR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gerbang.rehearsal.scenario import SESSION, Attempt


def hallway_image(seed: int = 0) -> np.ndarray:
    """An empty corridor for the idle camera: a soft gradient with sensor noise, no face."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(70, 140, 240, dtype=np.float32)[:, None]
    grey = np.repeat(rows, 320, axis=1) + rng.normal(0, 4, (240, 320))
    return cv2.cvtColor(np.clip(grey, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def captured_as(image: np.ndarray, capture: str, cut_x: int = 0, seed: int = 0) -> np.ndarray:
    """The photo as the gate camera captured it: too dark, blurred (moving), cut off at the
    frame edge, or re-captured (a second look: slightly moved, scaled and re-lit)."""
    if capture == "dark":
        return np.clip(image.astype(np.float32) * 0.25, 0, 255).astype(np.uint8)
    if capture == "blurred":
        return cv2.GaussianBlur(image, (0, 0), 4.0)
    if capture == "cut" and cut_x > 0:
        return np.ascontiguousarray(image[:, cut_x:])
    if capture == "recapture":
        rng = np.random.default_rng(seed)
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-4, 4),
                                         rng.uniform(0.95, 1.05))
        matrix[:, 2] += rng.uniform(-0.03, 0.03, 2) * (w, h)
        moved = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
        return np.clip(moved.astype(np.float32) * rng.uniform(0.85, 1.15), 0,
                       255).astype(np.uint8)
    return image


def render_attempt(attempt: Attempt, rooms_of: dict[str, str], seed: int) -> np.ndarray:
    """The camera frame for an attempt: the face as captured, with the card held beside it."""
    from device.capture.replay import read_image
    from device.decide.card import present_with_card, render_card

    image = read_image(attempt.photo)
    if image is None:
        raise ValueError(f"cannot read {attempt.photo}")
    frame = captured_as(image, attempt.capture, attempt.cut_x, seed)
    if attempt.card is None:
        return frame
    card = render_card(attempt.card, session=SESSION, room=rooms_of.get(attempt.card, "-"))
    return present_with_card(frame, card)


def cut_column(pipeline: Any, photo: Path) -> int | None:
    """Where a frame edge must run to cut a face off (30 % into the face box), or None when the
    photo shows no face to cut."""
    from device.capture.replay import read_image

    image = read_image(photo)
    if image is None:
        return None
    reading = pipeline.read(image)
    if reading.subject is None:
        return None
    x0, _, width, _ = reading.subject.box
    return max(1, int(x0 + 0.3 * width))
