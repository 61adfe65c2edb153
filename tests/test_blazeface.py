"""BlazeFace back-end: anchors, no face on blank images, eyes where YuNet puts them."""

from __future__ import annotations

import numpy as np
import pytest

from device.capture.replay import read_image
from device.infer.align import TEMPLATE_112
from device.infer.blazeface import BlazeFaceDetector, five_points, ssd_anchors


@pytest.fixture(scope="module")
def bundle():
    from device.infer.bundle import load_bundle

    return load_bundle()


@pytest.fixture(scope="module")
def blazeface(bundle):
    from device.infer.runtime import load_interpreter

    return BlazeFaceDetector(load_interpreter(bundle.path("blazeface"), threads=1))


def test_anchor_scheme_matches_the_model():
    anchors = ssd_anchors()
    assert anchors.shape == (896, 2)
    # 16×16 grid with 2 anchors per cell first, then 8×8 with 6.
    assert np.allclose(anchors[0], anchors[1]) and np.allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[512:518], [0.5 / 8, 0.5 / 8])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_mouth_corners_straddle_the_mouth_centre_like_the_template():
    template = TEMPLATE_112
    mouth_centre = template[3:].mean(0)
    six = np.array([template[0], template[1], template[2], mouth_centre, [0, 60], [112, 60]])
    points = five_points(six)
    assert np.allclose(points[3:].mean(0), mouth_centre)
    assert np.allclose(points[:3], template[:3])
    assert np.abs(points[3:] - template[3:]).max() < 0.5  # template is nearly level


@pytest.mark.parametrize("image", [
    np.zeros((480, 640, 3), np.uint8),
    np.full((240, 320, 3), 255, np.uint8),
    np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8),
    np.zeros((7, 5, 3), np.uint8),
], ids=["black", "white", "noise", "tiny"])
def test_no_face_in_synthetic_images(blazeface, image):
    assert blazeface.detect(image) == []


@pytest.mark.faces
def test_orl_one_face_each_with_eyes_where_yunet_puts_them(blazeface, bundle, faces_root):
    from device.infer.detect import YuNetDetector, yunet_output_tensors
    from device.infer.runtime import load_interpreter

    yunet = YuNetDetector(load_interpreter(bundle.path("detector"), threads=1),
                          yunet_output_tensors(bundle.entry("detector")))
    people = sorted(p for p in (faces_root / "orl").iterdir() if p.is_dir())[:40]
    images = [read_image(sorted(p.iterdir())[0]) for p in people]
    one_face = 0
    for image in images:
        faces = blazeface.detect(image)
        one_face += len(faces) == 1
        reference = yunet.detect(image)
        if not faces or not reference:
            continue
        # The pipeline judges the largest face; its eyes must be within a quarter eye distance.
        subject = max(faces, key=lambda f: f.box[2] * f.box[3])
        ref = reference[0]
        error = np.linalg.norm(subject.landmarks[:2] - ref.landmarks[:2], axis=1).max()
        assert error <= 0.25 * ref.inter_eye_px
    assert one_face >= 0.95 * len(images)
