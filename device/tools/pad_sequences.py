"""Synthesized presentation attacks: a real face photo held up to the gate camera as a sequence.

What an attacker without the applicant can do with a photo of them (ISO/IEC 30107 "artefact"
species), rendered as the camera would see it:

- ``still``  the photo held steady (hand tremor of a pixel or two);
- ``moved``  the photo moved, turned and tilted in 3-D, to fake a head turn or nod;
- ``bent``   the photo bent around a vertical axis (a cylinder) while turned, which gives it
  some depth, the best a paper attack can do against a 3-D check.

Only attacks are synthesized. A bona fide sequence needs a real person in front of a real camera:
turning a photo into a "live" video would measure the synthesizer, not the gate. The field test
protocol in docs/liveness.md says how a centre records real ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

ATTACKS = ("still", "moved", "bent")
FRAME_SIZE = (640, 480)  # width, height of a gate camera frame
FOCAL = 700.0            # pixels; a 640-px-wide sensor with a ~50° lens
PHOTO_WIDTH_PX = 300.0   # the photo's width in the frame when it faces the camera


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


_RAYS: np.ndarray | None = None


def _rays() -> np.ndarray:
    """Unnormalised viewing ray of every frame pixel (pinhole, principal point centred)."""
    global _RAYS
    if _RAYS is None:
        w, h = FRAME_SIZE
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        _RAYS = np.stack([(u - w / 2) / FOCAL, (v - h / 2) / FOCAL, np.ones_like(u)], -1)
    return _RAYS


def render_photo(photo: np.ndarray, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0,
                 shift: tuple[float, float] = (0.0, 0.0), bend: float = 0.0,
                 background: np.ndarray | None = None) -> np.ndarray:
    """The camera frame of ``photo`` held at ``FOCAL`` distance, rotated by (yaw, pitch, roll)
    degrees, shifted by ``shift`` pixels, and bent into a cylinder of curvature ``bend``
    (in 1/photo-widths; 0 = flat). Each frame pixel's ray is intersected with the photo's
    surface analytically, so the render is exact for both the plane and the cylinder."""
    h, w = photo.shape[:2]
    scale = PHOTO_WIDTH_PX / w  # world units per photo pixel at distance FOCAL
    rotation = _rotation(yaw, pitch, roll)
    centre = np.array([shift[0], shift[1], FOCAL])
    # Into the photo's own frame: origin at its centre, x along its width, z towards the back.
    origin = rotation.T @ (-centre)
    rays = _rays() @ rotation  # (R^T d) for every pixel, as row vectors
    dx, dy, dz = rays[..., 0], rays[..., 1], rays[..., 2]
    if bend:
        radius = PHOTO_WIDTH_PX / bend
        # Cylinder x² + (z - r)² = r² (axis along y through (0, ·, r)); nearest hit in front.
        oz = origin[2] - radius
        a = dx * dx + dz * dz
        b = 2 * (origin[0] * dx + oz * dz)
        c = origin[0] ** 2 + oz ** 2 - radius ** 2
        disc = np.maximum(b * b - 4 * a * c, 0)
        s = (-b - np.sqrt(disc)) / (2 * a)
        x = origin[0] + s * dx
        z = origin[2] + s * dz
        u_world = radius * np.arctan2(x, radius - z)  # arc length along the photo
        valid = (b * b - 4 * a * c) >= 0
    else:
        s = -origin[2] / np.where(np.abs(dz) < 1e-9, 1e-9, dz)
        u_world = origin[0] + s * dx
        valid = s > 0
    v_world = origin[1] + s * dy
    map_x = (u_world / scale + w / 2).astype(np.float32)
    map_y = (v_world / scale + h / 2).astype(np.float32)
    map_x[~valid] = -1
    frame = cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=(96, 96, 96))
    if background is not None:
        outside = (map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)
        frame[outside] = background[outside]
    return frame


def attack_frames(photo: np.ndarray, attack: str, n_frames: int, seed: int,
                  ) -> Iterator[np.ndarray]:
    """``n_frames`` camera frames of one attack of kind ``attack`` with ``photo``."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    rng = np.random.default_rng(seed)
    # One sweep: the attacker turns (or nods) the photo to a peak and back, direction random.
    direction = rng.choice([-1.0, 1.0])
    peak_yaw = rng.uniform(20, 40) * direction
    peak_pitch = rng.uniform(-15, 15)
    bend = rng.uniform(0.6, 1.4) if attack == "bent" else 0.0
    for i in range(n_frames):
        phase = np.sin(np.pi * i / max(n_frames - 1, 1))
        tremor = rng.normal(0, 0.8, 2)
        if attack == "still":
            yield render_photo(photo, roll=rng.normal(0, 0.3), shift=tuple(tremor))
        else:
            yield render_photo(photo, yaw=peak_yaw * phase, pitch=peak_pitch * phase,
                               roll=rng.normal(0, 1.0), shift=tuple(tremor + 20 * phase),
                               bend=bend)
