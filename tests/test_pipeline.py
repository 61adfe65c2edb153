"""Detection, alignment and embedding on real faces; no face yields no face, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from device.capture.replay import read_image
from device.infer.align import TEMPLATE_112, similarity_transform
from device.infer.bundle import calibrated_threshold, load_bundle


def test_similarity_transform_recovers_a_known_warp():
    angle, scale, shift = np.deg2rad(17), 2.3, np.array([40.0, -12.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (TEMPLATE_112 - shift) @ np.linalg.inv(scale * rot).T
    matrix = similarity_transform(src, TEMPLATE_112)
    mapped = src @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(mapped, TEMPLATE_112, atol=1e-6)


@pytest.mark.parametrize("image", [
    np.zeros((480, 640, 3), np.uint8),
    np.full((240, 320, 3), 255, np.uint8),
    np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8),
    np.zeros((7, 5, 3), np.uint8),
], ids=["black", "white", "noise", "tiny"])
def test_images_without_faces_give_no_face(pipeline, image):
    reading = pipeline.read(image)
    assert reading.faces == [] and reading.subject is None and reading.embedding is None


def _embeddings(pipeline, folder, people, per_person):
    out = {}
    for person in people:
        images = sorted(p for p in (folder / person).iterdir())[:per_person]
        vecs = [pipeline.read(read_image(p)).embedding for p in images]
        out[person] = [v for v in vecs if v is not None]
    return out


@pytest.mark.faces
@pytest.mark.parametrize("dataset", ["celeba", "orl"])
def test_same_person_scores_above_threshold_strangers_below(pipeline, faces_root, dataset):
    folder = faces_root / dataset
    people = sorted(p.name for p in folder.iterdir() if p.is_dir())[:12]
    emb = _embeddings(pipeline, folder, people, per_person=4)
    threshold = calibrated_threshold(load_bundle(), "cosine", 1e-4)
    genuine = [float(a @ b) for vs in emb.values() for i, a in enumerate(vs) for b in vs[i + 1:]]
    impostor = [float(emb[p][0] @ emb[q][0]) for i, p in enumerate(people)
                for q in people[i + 1:] if emb[p] and emb[q]]
    assert sum(len(v) for v in emb.values()) >= 0.9 * 4 * len(people)  # faces found
    assert np.mean(np.array(genuine) >= threshold) >= 0.7
    assert max(impostor) < threshold
    assert min(np.mean(genuine), 1.0) - np.mean(impostor) > 0.3
