"""Every quality-gate reason, from images derived from the shared faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from device.capture.replay import read_image
from device.config import QualityConfig
from device.infer.quality import assess
from gerbang.wire import QUALITY_REASONS

pytestmark = pytest.mark.faces

FRONTAL = "celeba/7201/001085.jpg"   # frontal, sharp, one face
TURNED = "celeba/7305/041555.jpg"    # head turned about 50 degrees
OTHER = "celeba/7203/007200.jpg"


@pytest.fixture(scope="module")
def frontal(faces_root):
    return read_image(faces_root / FRONTAL)


def reason(pipeline, image):
    return assess(pipeline.read(image), image.shape, QualityConfig())[1]


def test_a_good_photo_passes(pipeline, frontal):
    assert reason(pipeline, frontal) is None


def test_too_small(pipeline, frontal):
    h, w = frontal.shape[:2]
    small = cv2.resize(frontal, (w // 5, h // 5), interpolation=cv2.INTER_AREA)
    canvas = np.full((240, 320, 3), 120, np.uint8)
    canvas[:small.shape[0], :small.shape[1]] = small
    assert reason(pipeline, canvas) == "face_too_small"


def test_blurred(pipeline, frontal):
    assert reason(pipeline, cv2.GaussianBlur(frontal, (0, 0), 3)) == "blurred"


def test_too_dark_and_overexposed(pipeline, frontal):
    assert reason(pipeline, (frontal * 0.2).astype(np.uint8)) == "too_dark"
    bright = np.clip(frontal.astype(int) * 2 + 60, 0, 255).astype(np.uint8)
    assert reason(pipeline, bright) == "overexposed"


def test_two_people_at_the_camera(pipeline, frontal, faces_root):
    other = read_image(faces_root / OTHER)
    h = frontal.shape[0]
    other = cv2.resize(other, (int(other.shape[1] * h / other.shape[0]), h))
    assert reason(pipeline, np.hstack([frontal, other])) == "multiple_faces"


def test_face_cut_by_the_frame(pipeline, frontal):
    x, y, w, h = pipeline.read(frontal).subject.box
    assert reason(pipeline, frontal[:, int(x + w / 3):].copy()) == "face_cut_off"
    assert reason(pipeline, frontal[: int(y + 2 * h / 3)].copy()) == "face_cut_off"


def test_head_turned_either_way(pipeline, faces_root):
    turned = read_image(faces_root / TURNED)
    assert reason(pipeline, turned) == "off_frontal"
    assert reason(pipeline, np.ascontiguousarray(turned[:, ::-1])) == "off_frontal"


def test_in_plane_rotation_is_not_a_reason_to_refuse(pipeline, frontal):
    h, w = frontal.shape[:2]
    rotated = cv2.warpAffine(frontal, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h),
                             borderMode=cv2.BORDER_REPLICATE)
    assert reason(pipeline, rotated) is None  # alignment undoes a tilted head


def test_no_face(pipeline):
    assert reason(pipeline, np.full((240, 320, 3), 90, np.uint8)) == "no_face"


def test_every_reason_has_a_test():
    tested = {"face_too_small", "blurred", "too_dark", "overexposed", "multiple_faces",
              "face_cut_off", "off_frontal"}
    assert tested == set(QUALITY_REASONS)
